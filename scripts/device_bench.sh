#!/usr/bin/env bash
# The GPU measurements of the README, in one prepared run:
#   bash scripts/device_bench.sh [predict] [train] [compare] [tests]   (default: all)
# DATA (default ../shared/data) holds isbi2012/, lucchi_pp/ and dsb2018/; wheels for
# monai/hydra/... in WHEELS (default .whl). Results (logs, JSON, Markdown) land in $OUT.
# On a lent machine ../shared does not travel: copy those three folders into an ignored
# folder of the checkout (e.g. .devdata/, listed in .git/info/exclude), carry it with the
# wheels, and run  DATA=.devdata bash scripts/device_bench.sh
set -uo pipefail
OUT=${OUT:-device_out}
DATA=${DATA:-../shared/data}
WHEELS=${WHEELS:-.whl}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 NO_ALBUMENTATIONS_UPDATE=1
if [ -d "$WHEELS" ]; then
  python3 -m pip install -q --no-index --no-deps --target /tmp/site "$WHEELS"/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD/src
fi
parts=${*:-tests predict train compare}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" \
  | tee -a "$OUT/gpu.txt"

# Each part has its own time limit so one failure leaves the others' numbers.
part() { local name=$1 limit=$2; shift 2; echo; echo "=== $name"
  timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.log" | grep -v '^\s*$' | tail -n 25; }

for p in $parts; do case $p in
  tests) part tests 80 python3 -m pytest -q -p no:cacheprovider tests/infer/test_predict_cuda.py \
      tests/train/test_train.py -k cuda ;;
  predict)
    part predict 100 python3 scripts/bench_predict.py --methods segunet,segunet-host,monai \
      --json "$OUT/bench_predict.json"
    part predict_compiled 150 python3 scripts/bench_predict.py --compile --methods segunet,monai \
      --json "$OUT/bench_predict_compiled.json"
    part predict_32k 100 python3 scripts/bench_predict.py --methods segunet-stream --size 32768 \
      --dtype uint8 --json "$OUT/bench_predict_32k.json" ;;
  train)
    part train 250 python3 scripts/bench_train.py --data-root "$DATA" --steps 30 --warmup 5 \
      --max-seconds 20 --json "$OUT/bench_train.json" ;;
  compare)
    part compare 250 python3 scripts/compare_models.py --data "$DATA/dsb2018/train" \
      --max-images 200 --steps 800 --override trainer.compile=false \
      --markdown "$OUT/compare_models.md" --json "$OUT/compare_models.json" ;;
esac; done
