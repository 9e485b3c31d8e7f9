#!/usr/bin/env bash
# Device call: GPU tests of the triton backend, then one bench section.
# usage: bash benchmarks/device_gpu_tests.sh [prefill|decode|none]
set -o pipefail
export PYTHONPATH=. PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,temperature.gpu --format=csv
timeout 330 python3 -m pytest -m gpu tests/kernels -q -n 8 -p no:cacheprovider 2>&1 | tail -40 | tee $OUT/pytest_gpu.log
if [ "${1:-decode}" != none ]; then
  timeout ${BENCH_TIMEOUT:-220} python3 -m anyattn bench --only ${1:-decode} --json $OUT/bench_${1:-decode}.json 2>&1 | tee $OUT/bench_${1:-decode}.log
fi
