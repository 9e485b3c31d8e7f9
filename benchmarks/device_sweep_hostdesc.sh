#!/usr/bin/env bash
# Device call: GPU tests with host-side TMA descriptors on by default, then the prefill
# config/host-descriptor sweep (benchmarks/prefill_short_sweep.py).
set -o pipefail
export PYTHONPATH=. PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}
nvidia-smi --query-gpu=name,driver_version,clocks.sm --format=csv,noheader
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
timeout 360 python3 benchmarks/prefill_short_sweep.py --out $OUT > $OUT/sweep.log 2>&1; echo "sweep exit $?"
timeout 200 python3 -m pytest -m gpu tests/kernels -q -n 8 -p no:cacheprovider > $OUT/pytest_gpu.log 2>&1; echo "pytest exit $?"
grep -E "passed|failed|Error|FAILED" $OUT/pytest_gpu.log | tail -12
grep -E "FAIL|failed" $OUT/sweep.log | head -10
sed -n '/==== summary/,$p' $OUT/sweep.log
