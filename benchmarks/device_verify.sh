#!/usr/bin/env bash
# Verification call: GPU tests + the decode bench on the final code.
set -o pipefail
export PYTHONPATH=. PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}
timeout 200 python3 -m pytest -m gpu tests/kernels -q -n 8 -p no:cacheprovider 2>&1 | tail -3 | tee $OUT/pytest_gpu.log
timeout 120 python3 -m anyattn bench --only decode --json $OUT/bench_decode.json > $OUT/bench_decode.log 2>&1
tail -n 22 $OUT/bench_decode.log
