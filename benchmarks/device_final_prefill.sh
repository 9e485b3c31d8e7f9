#!/usr/bin/env bash
# Device call: GPU kernel tests on the current code, same-process before/after of the prefill
# table (benchmarks/prefill_short_sweep.py --set compare), a few more 2-CTA configs
# (--set extra; EXTRA=0 skips it), then the prefill bench table (python3 -m anyattn bench
# --only prefill) and, with DECODE=1, the decode bench table.
set -o pipefail
export PYTHONPATH=. PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}
nvidia-smi --query-gpu=name,driver_version,clocks.sm --format=csv,noheader
timeout 150 python3 -m pytest -m gpu tests/kernels -q -n 8 -p no:cacheprovider > $OUT/pytest_gpu.log 2>&1; echo "pytest exit $?"
timeout 150 python3 benchmarks/prefill_short_sweep.py --set compare --no-check --out $OUT > $OUT/compare.log 2>&1; echo "compare exit $?"
if [ "${EXTRA:-1}" = 1 ]; then
timeout 150 python3 benchmarks/prefill_short_sweep.py --set extra --seqlens 1024,2048,4096,8192 --out $OUT > $OUT/extra.log 2>&1; echo "extra exit $?"
fi
timeout 150 python3 -m anyattn bench --only prefill --backends triton,sdpa_cudnn,sdpa_flash --json $OUT/bench_prefill.json > $OUT/bench_prefill.log 2>&1; echo "bench exit $?"
if [ "${DECODE:-0}" = 1 ]; then
timeout 120 python3 -m anyattn bench --only decode --backends triton,sdpa_cudnn,sdpa_flash --json $OUT/bench_decode.json > $OUT/bench_decode.log 2>&1; echo "bench decode exit $?"
fi
grep -E "passed|failed|FAILED|Error" $OUT/pytest_gpu.log | tail -8
grep -E "FAIL|failed" $OUT/compare.log $OUT/extra.log 2>/dev/null | head -8
sed -n '/==== summary/,$p' $OUT/compare.log | grep -v configs
[ -f $OUT/extra.log ] && sed -n '/==== summary/,$p' $OUT/extra.log
tail -n 30 $OUT/bench_prefill.log
[ -f $OUT/bench_decode.log ] && tail -n 17 $OUT/bench_decode.log
