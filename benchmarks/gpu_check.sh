#!/usr/bin/env bash
# GPU check: train rbnn and xnor on Fashion-MNIST for a few epochs on CUDA, printing img/s and accuracy.
#
#   bash benchmarks/gpu_check.sh            # here: copies the dataset into data_local/ (ignored by git), then
#                                           # runs the check (a short CPU fallback when there is no GPU)
#   bash benchmarks/gpu_check.sh --prepare  # only copy the data (before shipping the tree to a GPU machine,
#                                           # which needs `data_local` carried along: it is git-ignored)
#
# Everything runs from the source tree (PYTHONPATH=src), so the GPU machine needs torch, numpy and pyyaml but
# not an installed rbnn. The whole GPU run is bounded to well under 10 minutes (each training has a timeout).
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=data_local/fashion-mnist
SRC=/usr/share/datasets/fashion-mnist
FILES="train-images-idx3-ubyte.gz train-labels-idx1-ubyte.gz t10k-images-idx3-ubyte.gz t10k-labels-idx1-ubyte.gz"

if [ -d "$SRC" ]; then
    mkdir -p "$DATA"
    for f in $FILES; do
        [ -s "$DATA/$f" ] || cp "$SRC/$f" "$DATA/$f"
    done
fi
for f in $FILES; do
    if [ ! -s "$DATA/$f" ]; then
        echo "error: $DATA/$f missing: run this script once where $SRC exists and carry data_local along" >&2
        exit 2
    fi
done
[ "${1:-}" = "--prepare" ] && { echo "data ready in $DATA"; exit 0; }

export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python}
OUT=$(mktemp -d "${TMPDIR:-/tmp}/rbnn-gpu-check.XXXXXX")
trap 'rm -rf "$OUT"' EXIT

if "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    "$PY" -c "import torch; p = torch.cuda.get_device_properties(0); print(f'device: {p.name}, {p.total_memory / 2**30:.0f} GiB, torch {torch.__version__}')"
    DEV=(device=cuda)
    # full Fashion-MNIST (60k/10k), 3 epochs: a few seconds per epoch on a modern GPU
    RUNS=("rbnn epochs=3 batch_size=256 optim.lr=0.1" "xnor epochs=3 batch_size=256 optim.lr=0.1"
          "rbnn epochs=3 batch_size=256 optim.lr=0.1 amp=bf16 channels_last=true")
    LIMIT=170
else
    echo "device: no CUDA here; CPU fallback (tiny subset, 1 epoch) to check the script itself"
    DEV=(device=cpu threads=1 data.subset=1024 data.test_subset=512)
    RUNS=("rbnn epochs=1 batch_size=128" "xnor epochs=1 batch_size=128")
    LIMIT=170
fi

printf '%-52s %10s %9s %9s %8s\n' "run" "img/s" "test acc" "best acc" "seconds"
status=0
i=0
for spec in "${RUNS[@]}"; do
    i=$((i + 1))
    read -r method rest <<<"$spec"
    run="$OUT/run$i"
    # shellcheck disable=SC2086
    if timeout "$LIMIT" "$PY" -m rbnn train model=smallnet method="$method" data=fashion-mnist \
        data.root="$DATA" "${DEV[@]}" $rest export=false out="$run" >"$run.log" 2>&1; then
        "$PY" - "$run/summary.json" "$method $rest" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
print(f"{sys.argv[2]:<52} {s['train_img_per_s']:10.0f} {100 * s['test_acc']:8.2f}% "
      f"{100 * s['best_test_acc']:8.2f}% {s['train_seconds']:8.1f}")
PY
    else
        code=$?
        echo "$method $rest: FAILED (exit $code); last lines of its log:"
        tail -n 5 "$run.log"
        status=1
    fi
done
exit $status
