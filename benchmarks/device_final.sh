#!/usr/bin/env bash
# Final device call: GPU tests, decode bench, a second prefill sample, an ncu look.
set -o pipefail
export PYTHONPATH=. PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}
timeout 60 python3 benchmarks/decode_small_batch.py > $OUT/decode_small_batch.log 2>&1
timeout 200 python3 -m pytest -m gpu tests/kernels -q -n 8 -p no:cacheprovider 2>&1 | tail -5 | tee $OUT/pytest_gpu.log
timeout 120 python3 -m anyattn bench --only decode --json $OUT/bench_decode.json > $OUT/bench_decode.log 2>&1
timeout 90 python3 -m anyattn bench --only prefill --quick --backends triton,sdpa_cudnn,sdpa_flash --json $OUT/bench_prefill_quick.json > $OUT/bench_prefill_quick.log 2>&1
timeout 100 ncu --clock-control none -k regex:"_fwd_kernel|_paged_kernel" -c 2 --section SpeedOfLight --section Occupancy --section LaunchStats python3 benchmarks/profile_one.py > $OUT/ncu.txt 2>&1
cat $OUT/decode_small_batch.log; tail -n 45 $OUT/bench_decode.log; tail -n 12 $OUT/bench_prefill_quick.log; grep -E "_kernel|Duration|Throughput|Registers|Achieved Occupancy|Shared Memory Config|Block Limit" $OUT/ncu.txt | head -40
