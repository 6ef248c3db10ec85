#!/usr/bin/env bash
# GPU check of rbnn on a fresh CUDA machine holding only this repository. Under 5 minutes it:
#   1. installs what is missing with the README's command (its main command without the final `rbnn train`),
#   2. checks the device, and fails loudly when torch cannot see CUDA on a machine that has a GPU (a broken or
#      CPU-only install is never reported as "no GPU"),
#   3. trains resnet20_bireal with rbnn on Fashion-MNIST for 2 epochs on CUDA (SGD, lr 0.1: the paper
#      optimizer), sends it SIGTERM during epoch 2, resumes it, and compares it with an uninterrupted run,
#   4. exports the packed 1-bit model and verifies it against the torch graph (the end of `rbnn train`),
#      and evaluates the checkpoint with `rbnn eval --device`,
#   5. measures training img/s with and without amp=bf16 and channels_last,
# and writes everything to ONE JSON file, gpu_check.json, in --out DIR, else $OUT, else ./gpu_check_out.
#
#   bash benchmarks/gpu_check.sh [--out DIR]              # the real check (CUDA)
#   bash benchmarks/gpu_check.sh --cpu-dry-run [--out DIR] # the same logic on CPU with tiny sizes (no install)
#   bash benchmarks/gpu_check.sh --prepare                # copy Fashion-MNIST into data_local/ (git-ignored),
#                                                         # for a machine that cannot apt-get it
# Exit status: 0 all checks passed; 1 a check failed; 3 install broken; 4 GPU present but torch cannot use
# it; 5 no GPU on this machine; 2 usage or data missing. The JSON says which, in "status".
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
ROOT=$PWD
PY=${PYTHON:-python3}
DRY=0
PREPARE=0
DEST=${OUT:-$ROOT/gpu_check_out}
while [ $# -gt 0 ]; do
    case "$1" in
        --cpu-dry-run) DRY=1 ;;
        --prepare) PREPARE=1 ;;
        --out) DEST=${2:?--out needs a directory}; shift ;;
        *) echo "usage: $0 [--cpu-dry-run] [--prepare] [--out DIR]" >&2; exit 2 ;;
    esac
    shift
done
mkdir -p "$DEST" || exit 2
DEST=$(cd "$DEST" && pwd)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/rbnn-gpu-check.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
JSON=$DEST/gpu_check.json
T_START=$(date +%s)
FILES="train-images-idx3-ubyte.gz train-labels-idx1-ubyte.gz t10k-images-idx3-ubyte.gz t10k-labels-idx1-ubyte.gz"
SYSTEM_DATA=/usr/share/datasets/fashion-mnist
LOCAL_DATA=$ROOT/data_local/fashion-mnist
export PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}"

# ---- JSON: every step appends "key<TAB>json value" to $WORK/results; finish() assembles one object ----------
put() { printf '%s\t%s\n' "$1" "$(printf '%s' "$2" | tr '\n' ' ')" >>"$WORK/results"; }  # one line each
put_str() { put "$1" "$("$PY" -c 'import json, sys; print(json.dumps(sys.argv[1]))' "$2" 2>/dev/null || echo '"?"')"; }
finish() {  # finish STATUS EXIT_CODE
    put_str status "$1"
    put seconds "$(($(date +%s) - T_START))"
    "$PY" - "$WORK/results" "$JSON" <<'PY' || { echo "error: could not write $JSON" >&2; exit "${2:-1}"; }
import json, sys
out = {}
for line in open(sys.argv[1]):
    key, _, value = line.rstrip("\n").partition("\t")
    try:
        out[key] = json.loads(value)
    except ValueError:  # keep what a step printed rather than lose the whole report
        out[key] = {"unparsed": value}
with open(sys.argv[2], "w") as f:
    json.dump(out, f, indent=2)
    f.write("\n")
PY
    echo "status: $1 (results in $JSON)"
    exit "$2"
}
fail() { echo "error: $2" >&2; put_str error "$2"; finish "$1" "$3"; }
: >"$WORK/results"
put dry_run "$([ $DRY = 1 ] && echo true || echo false)"

# ---- data --------------------------------------------------------------------------------------------------
have_data() { for f in $FILES; do [ -s "$1/$f" ] || return 1; done; }
if [ $PREPARE = 1 ]; then
    have_data "$SYSTEM_DATA" || { echo "error: $SYSTEM_DATA is incomplete" >&2; exit 2; }
    mkdir -p "$LOCAL_DATA" && for f in $FILES; do cp "$SYSTEM_DATA/$f" "$LOCAL_DATA/$f"; done
    echo "data ready in $LOCAL_DATA (carry data_local/ along: it is git-ignored)"
    exit 0
fi

# ---- 1. install (only what is missing; the README's command) -------------------------------------------------
imports_ok() { "$PY" -c "import torch, numpy, yaml, numba, rbnn" >/dev/null 2>&1; }
if imports_ok && { have_data "$SYSTEM_DATA" || have_data "$LOCAL_DATA"; }; then
    put_str install "already installed"
elif [ $DRY = 1 ]; then
    fail install_broken "dry run: torch/numpy/yaml/numba/rbnn not importable or no Fashion-MNIST; install first" 3
else
    CMD=$(sed -n '/<!-- main-command -->/,/<!-- \/main-command -->/p' README.md | grep -v '^<!--' | grep -v '^```' \
        | sed 's/ *&& *rbnn train *$//')
    [ -n "$CMD" ] || fail install_broken "README.md has no main-command block to install with" 3
    echo "installing: $CMD"
    if ! bash -c "$CMD" >"$WORK/install.log" 2>&1; then
        tail -n 20 "$WORK/install.log" >&2
        put_str install_log_tail "$(tail -n 20 "$WORK/install.log")"
        fail install_broken "the install command failed: $CMD" 3
    fi
    imports_ok || fail install_broken "installed, but torch/numpy/yaml/numba/rbnn still do not import" 3
    put_str install "$CMD"
fi
if have_data "$SYSTEM_DATA"; then DATA=$SYSTEM_DATA; elif have_data "$LOCAL_DATA"; then DATA=$LOCAL_DATA; else
    fail data_missing "Fashion-MNIST not in $SYSTEM_DATA nor $LOCAL_DATA (apt-get install dataset-fashion-mnist)" 2
fi

# ---- 2. device ---------------------------------------------------------------------------------------------
if ! "$PY" - >"$WORK/device.json" 2>"$WORK/device.err" <<'PY'
import json, shutil, subprocess
import torch
info = {"torch": torch.__version__, "torch_cuda_build": torch.version.cuda, "cuda_available": torch.cuda.is_available()}
smi = shutil.which("nvidia-smi")
if smi:
    r = subprocess.run([smi, "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                       capture_output=True, text=True)
    info["nvidia_smi"] = r.stdout.strip() if r.returncode == 0 else f"exit {r.returncode}: {r.stderr.strip()}"
    info["gpu_present"] = r.returncode == 0 and bool(r.stdout.strip())
else:
    import os
    info["gpu_present"] = os.path.exists("/dev/nvidia0")
if info["cuda_available"]:
    p = torch.cuda.get_device_properties(0)
    info.update(name=p.name, memory_gib=round(p.total_memory / 2**30, 1), capability=f"{p.major}.{p.minor}",
                count=torch.cuda.device_count())
    torch.ones(1, device="cuda").add_(1).item()  # a real kernel, not only the driver query
print(json.dumps(info))
PY
then
    fail install_broken "torch failed while checking the device: $(tail -n 3 "$WORK/device.err")" 3
fi
put device "$(cat "$WORK/device.json")"
field() { "$PY" -c "import json, sys; print(json.load(open(sys.argv[1])).get(sys.argv[2]))" "$WORK/device.json" "$1"; }
if [ $DRY = 1 ]; then
    DEV=(device=cpu threads=1 data.subset=640 data.test_subset=256 batch_size=64)
    SPEED=(data.subset=192 batch_size=64)
    LIMIT=170
elif [ "$(field cuda_available)" = True ]; then
    DEV=(device=cuda batch_size=256)
    SPEED=(data.subset=20480 batch_size=256)
    LIMIT=120
elif [ "$(field gpu_present)" = True ]; then
    fail gpu_unusable "a GPU is present but torch $(field torch) (CUDA build: $(field torch_cuda_build)) cannot use it" 4
else
    fail no_gpu "no GPU on this machine (torch $(field torch), CUDA build $(field torch_cuda_build))" 5
fi
echo "device: $(cat "$WORK/device.json")"
TRAIN=(model=resnet20_bireal method=rbnn data=fashion-mnist "data.root=$DATA" optim.name=sgd optim.lr=0.1
       optim.momentum=0.9 optim.weight_decay=1e-4 epochs=2 seed=1 deterministic=true progress=false)
STATUS=ok
check() { [ "$1" = True ] || { STATUS=check_failed; echo "FAILED: $2" >&2; put_str "failed_$3" "$2"; }; }
summary() {  # summary FILE EXPR: EXPR evaluated with s = the JSON in FILE (and json importable)
    "$PY" -c "import json, sys; s = json.load(open(sys.argv[1])); print(eval(sys.argv[2], {'json': json, 's': s}))" "$@"
}

# ---- 3. train 2 epochs, SIGTERM in epoch 2, resume; an uninterrupted twin for exactness -----------------------
RUN=$WORK/run
"$PY" -m rbnn train "${TRAIN[@]}" "${DEV[@]}" "out=$RUN" >"$WORK/run.log" 2>&1 &
PID=$!
t0=$(date +%s)
while kill -0 "$PID" 2>/dev/null && [ ! -e "$RUN/last.pt" ]; do
    [ $(($(date +%s) - t0)) -gt "$LIMIT" ] && { kill -KILL "$PID"; break; }
    sleep 0.2
done
kill -TERM "$PID" 2>/dev/null
wait "$PID"
CODE=$?
put sigterm_exit_code "$CODE"
put_str sigterm_message "$(grep -m1 'error:' "$WORK/run.log")"
if [ "$CODE" = 143 ]; then
    timeout "$LIMIT" "$PY" -m rbnn train --resume "${TRAIN[@]}" "${DEV[@]}" "out=$RUN" >"$WORK/resume.log" 2>&1
    RCODE=$?
    put resume_exit_code "$RCODE"
    check "$([ $RCODE = 0 ] && echo True)" "resume after SIGTERM (exit $RCODE): $(tail -n 3 "$WORK/resume.log")" resume
else
    check False "SIGTERM during epoch 2 should exit 143, got $CODE: $(tail -n 3 "$WORK/run.log")" sigterm
fi
timeout "$LIMIT" "$PY" -m rbnn train "${TRAIN[@]}" "${DEV[@]}" export=false "out=$WORK/twin" >"$WORK/twin.log" 2>&1 \
    || check False "uninterrupted twin run failed: $(tail -n 3 "$WORK/twin.log")" twin
if [ -s "$RUN/summary.json" ] && [ -s "$WORK/twin/last.pt" ]; then
    put training "$(summary "$RUN/summary.json" 'json.dumps({k: s.get(k) for k in ("test_acc", "best_test_acc",
        "final_train_loss", "train_seconds", "train_img_per_s", "epochs", "device")})')"
    EXACT=$("$PY" - "$RUN/last.pt" "$WORK/twin/last.pt" <<'PY'
import sys, torch
a, b = (torch.load(p, map_location="cpu", weights_only=True)["model"] for p in sys.argv[1:3])
print(a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a))
PY
)
    put resume_bit_exact "$([ "$EXACT" = True ] && echo true || echo false)"
    # not a failure by itself: CUDA kernels without a deterministic variant may differ in the last bit
    [ "$EXACT" = True ] || echo "note: resumed run differs from the uninterrupted twin (see resume_bit_exact)"
    acc=$(summary "$RUN/summary.json" 's["test_acc"]')
    put test_acc "$acc"
    [ $DRY = 1 ] || check "$("$PY" -c "print($acc > 0.75)")" "test accuracy $acc after 2 epochs (expected > 0.75)" acc
else
    check False "no summary.json after the resumed run" training
fi

# ---- 4. export + verify (done by train), eval --device -------------------------------------------------------
if [ -s "$RUN/summary.json" ]; then
    put export "$(summary "$RUN/summary.json" 'json.dumps({k: v for k, v in s.get("export", {}).items()
        if k in ("file_bytes", "int_exact", "argmax_agreement", "max_rel_logit_err", "ok", "error",
                   "speedup_vs_torch_eval")})')"
    check "$(summary "$RUN/summary.json" 's.get("export", {}).get("int_exact") is True')" \
        "packed model's integer pre-activations differ from the torch graph" export
    EDEV=$([ $DRY = 1 ] && echo cpu || echo cuda)
    if timeout 60 "$PY" -m rbnn eval "$RUN" --device "$EDEV" >"$WORK/eval.json" 2>"$WORK/eval.err"; then
        put eval "$(cat "$WORK/eval.json")"
    else
        check False "rbnn eval --device $EDEV failed: $(tail -n 2 "$WORK/eval.err")" eval
    fi
fi

# ---- 5. throughput: amp x channels_last ------------------------------------------------------------------------
SPEEDS=""
for amp in none bf16; do
    for cl in false true; do
        out=$WORK/speed-$amp-$cl
        if timeout "$LIMIT" "$PY" -m rbnn train model=resnet20_bireal method=rbnn data=fashion-mnist "data.root=$DATA" \
            optim.name=sgd optim.lr=0.1 epochs=2 export=false progress=false "${DEV[@]}" "${SPEED[@]}" \
            "amp=$amp" "channels_last=$cl" "out=$out" >"$out.log" 2>&1; then
            # the second epoch: the first includes start-up and cuDNN's autotuning
            ips=$("$PY" -c "import csv, sys; print(round(float(list(csv.DictReader(open(sys.argv[1])))[-1]['train_img_per_s'])))" "$out/metrics.csv")
        else
            ips=null
            check False "throughput run amp=$amp channels_last=$cl failed: $(tail -n 2 "$out.log")" "speed_${amp}_$cl"
        fi
        echo "img/s amp=$amp channels_last=$cl: $ips"
        SPEEDS="$SPEEDS${SPEEDS:+, }\"amp=$amp channels_last=$cl\": $ips"
    done
done
put train_img_per_s "{$SPEEDS}"
finish "$STATUS" "$([ "$STATUS" = ok ] && echo 0 || echo 1)"
