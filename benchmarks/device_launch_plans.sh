#!/usr/bin/env bash
# One device call for the Triton launch plans (issue 7 §2): every GPU test (the plan tests in
# tests/kernels/test_triton_launch_gpu.py among them) with each fast launch verified against
# Triton's own specialisation, then the overhead benchmark. Run from the repository root;
# results under $OUT. About 6-8 minutes on an H200.
set -o pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=.
OUT=${OUT:-/tmp/out}
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
ANYATTN_TRITON_VERIFY_PLANS=1 timeout 300 python3 -m pytest -m gpu tests -q -n 8 -p no:cacheprovider -rs \
  > $OUT/pytest_gpu_verify.log 2>&1; echo "pytest exit: $?"
grep -v "^SKIPPED" $OUT/pytest_gpu_verify.log | tail -25
timeout 170 python3 -m anyattn bench --only overhead --json $OUT/overhead.json 2>&1 | tee $OUT/overhead.txt
