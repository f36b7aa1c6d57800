#!/usr/bin/env bash
# The GPU check, one prepared script (under 8 minutes on one GPU; run it from the repository root
# on a machine with a GPU): the tests that use CUDA, one default proxy trial on the GPU (wall
# time, steps/s, peak GPU memory), and a 4-trial search at 0.25 GPU a trial (4 at once).
# It installs nothing beyond `make install`. Output folders: runs/gpu-smoke*.
set -euo pipefail

VENV=${VENV:-.venv}
PY="$VENV/bin/python"
start=$(date +%s)
stamp() { echo "[$(( $(date +%s) - start )) s] $*"; }

make install VENV="$VENV" >/dev/null
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$PY" -c "import torch; assert torch.cuda.is_available(), 'torch sees no CUDA'; \
print('torch', torch.__version__, 'CUDA', torch.version.cuda, torch.cuda.get_device_name(0))"

stamp "tests that use CUDA (pytest -m cuda)"
"$PY" -m pytest -m cuda -p no:cacheprovider

stamp "the embedded data and the backbone's pretraining (once, cached in runs/cache)"
"$VENV/bin/nasfpn" data synth

stamp "one default proxy trial on the GPU (FPN)"
"$PY" - <<'PY'
import time

import torch

from nas.data.coco import CocoDetection
from nas.proxy.necks import resolve_neck
from nas.proxy.prepare import prepare_proxy_data
from nas.proxy.train import train_proxy
from nas.settings import ProxySettings, budget_of

settings = ProxySettings()
splits = [CocoDetection.from_dir("data/shapes", split) for split in ("train", "val")]
data = prepare_proxy_data(*splits, settings, "runs/cache")
torch.cuda.reset_peak_memory_stats()
began = time.perf_counter()
out = "runs/gpu-smoke-trial"
metrics = train_proxy(resolve_neck("fpn"), data, settings, seed=0, out_dir=out, progress=False)
torch.cuda.synchronize()
wall = time.perf_counter() - began
steps = budget_of(settings.budget).steps
print(
    f"default trial (FPN, {steps} steps + evaluations): {wall:.1f} s wall, "
    f"{steps / wall:.2f} steps/s with the evaluations, AP {metrics['AP'] * 100:.1f}, "
    f"peak GPU memory {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB"
)
PY

stamp "a 4-trial search at 0.25 GPU a trial"
"$VENV/bin/nasfpn" search --name gpu-smoke --controller random --trials 4 --workers 4 \
    --gpus-per-trial 0.25 --scheduler none
"$PY" - <<'PY'
from nas.search.runs import RunFolder

for t in RunFolder("runs/gpu-smoke").load_study().trials:
    a = t.user_attrs
    print(f"trial {t.number} {t.state.name}: device {a.get('device')}, GPU ids {a.get('gpus')}, "
          f"started {a.get('started', 0):.0f}, {a.get('seconds', 0):.0f} s, AP {a.get('AP', 0) * 100:.1f}")
PY
stamp "gpu_smoke done"
