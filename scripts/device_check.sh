#!/usr/bin/env bash
# One prepared GPU session: check the CUDA path end to end and measure it, in one run.
#   bash scripts/device_check.sh            (wheels for monai/hydra/... in .whl/, see README)
# Results land in $OUT (default ./device_out): logs, TensorBoard runs, bench JSON.
set -uo pipefail
OUT=${OUT:-device_out}
mkdir -p "$OUT"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD/src
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$OUT/gpu.txt"

step() { echo; echo "=== $1"; shift; /usr/bin/time -f "%e s" "$@" 2>&1 | tail -n 12; }

# 1. The quickstart on CUDA: bf16 autocast, channels_last, augmentation on the GPU.
step "quickstart (cuda)" python3 -m segunet.cli train experiment=quickstart logging.progress=false \
  hydra.run.dir="$OUT/quickstart"
# 2. The paper's U-Net (valid, 572 -> 388) at batch 8: images/s, from TensorBoard.
step "paper unet 572->388" python3 -m segunet.cli train trainer.max_steps=150 trainer.val_every=150 \
  trainer.batch_size=8 data.n_train=8 data.n_val=1 data.shape=[700,700] data.patch_size=[572,572] \
  logging.progress=false logging.log_every=25 hydra.run.dir="$OUT/paper_unet"
# 3. The data benchmark (weight maps, elastic deformation CPU and GPU).
[ -f scripts/bench_data.py ] && step "bench_data" python3 scripts/bench_data.py --skip weightmaps --json "$OUT/bench_data.json"
# 4. The tests that exercise CUDA (augmentation on the device, the bf16 trainer path).
step "pytest (cuda)" python3 -m pytest -q -p no:cacheprovider tests/data/test_augment.py \
  tests/train/test_train.py::test_cuda_fast_path_trains_and_checkpoints_load_on_cpu
python3 - "$OUT" <<'PY'
import glob, sys
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
for run in sorted(glob.glob(f"{sys.argv[1]}/*/tensorboard")):
    acc = EventAccumulator(run); acc.Reload()
    tags = acc.Tags()["scalars"]
    ips = [e.value for e in acc.Scalars("train/images_per_s")][1:] if "train/images_per_s" in tags else []
    dice = acc.Scalars("val/dice")[-1].value if "val/dice" in tags else float("nan")
    mem = acc.Scalars("train/gpu_memory_gb")[-1].value if "train/gpu_memory_gb" in tags else float("nan")
    print(f"{run}: images/s {sum(ips)/max(len(ips),1):.1f} (after warm-up), val dice {dice:.4f}, peak GPU {mem:.2f} GB")
PY
