#!/usr/bin/env bash
# One device call for a release: the real broken xFormers wheel installed (a doctor case), the
# selector's ranking, the doctor, dispatch overhead, every GPU test, then the full benchmark.
# Run from the repository root with `.whl/` carried (xformers 0.0.35, built for torch 2.10+cu128).
set -o pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:.
else
  export PYTHONPATH=.
fi
nvidia-smi --query-gpu=name,driver_version,clocks.sm --format=csv,noheader
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
python3 -m anyattn which --dtype bf16 --head-dim 128 --causal 2>&1 | tee $OUT/which.txt
timeout 120 python3 -m anyattn doctor 2>&1 | tee $OUT/doctor.txt; echo "doctor exit: $?"
timeout 120 python3 -m anyattn doctor --json --save-facts $OUT/device_facts.json > $OUT/doctor.json
timeout 120 python3 -m anyattn bench --only overhead --json $OUT/overhead.json 2>&1 | tee $OUT/overhead.txt
timeout 260 python3 -m pytest -m gpu tests -q -n 8 -p no:cacheprovider -rs > $OUT/pytest_gpu.log 2>&1
grep -v "^SKIPPED" $OUT/pytest_gpu.log | tail -15
timeout 240 python3 -m anyattn bench --json $OUT/bench.json > $OUT/bench.log 2>&1; echo "bench exit: $?"
tail -n 70 $OUT/bench.log
