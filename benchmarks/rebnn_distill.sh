#!/usr/bin/env bash
# ReBNN two-stage recipe on Fashion-MNIST, stage 2 with and without the teacher (issue 5 evidence).
#   bash benchmarks/rebnn_distill.sh [OUT=runs/distill] [extra overrides, e.g. threads=1]
# Teacher: float reactnet_small; stage 1: W32A1 + KD; stage 2: W1A1 ReBNN from stage 1, KD vs plain CE.
set -euo pipefail
out=${1:-runs/distill}
shift || true
rbnn train -c configs/rebnn_fashion_teacher.yaml out="$out/teacher" "$@"
rbnn train -c configs/rebnn_fashion_stage1.yaml out="$out/stage1" distill.teacher="$out/teacher" "$@"
rbnn train -c configs/rebnn_fashion_stage2.yaml out="$out/stage2-kd" init_from="$out/stage1" \
  distill.teacher="$out/teacher" "$@"
rbnn train -c configs/rebnn_fashion_stage2.yaml out="$out/stage2-nokd" init_from="$out/stage1" \
  distill.teacher=none "$@"
# stage 2 straight from scratch (no stage 1, no teacher): what the two-stage recipe buys
rbnn train -c configs/rebnn_fashion_stage2.yaml out="$out/stage2-scratch" init_from=none distill.teacher=none "$@"
python - "$out" <<'PY'
import json, sys, pathlib
out = pathlib.Path(sys.argv[1])
for run in ("teacher", "stage1", "stage2-kd", "stage2-nokd", "stage2-scratch"):
    s = json.loads((out / run / "summary.json").read_text())
    print(f"{run:15s} test {100 * s['test_acc']:.2f} %  best {100 * s['best_test_acc']:.2f} %")
PY
