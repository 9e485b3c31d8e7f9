#!/usr/bin/env bash
# The GPU release run, in stages that each fit one device call (10 min). Run from the repository root:
#   bash benchmarks/device_release.sh stash        # calls 1-2: keep the carried wheels in /tmp/wheels
#   bash benchmarks/device_release.sh install      # join the split cu13 wheel, install ALL wheels at once
#   bash benchmarks/device_release.sh tests        # every GPU test but FlashInfer's (verified launch plans)
#   bash benchmarks/device_release.sh flashinfer   # FlashInfer's GPU tests (its kernels JIT with nvcc)
#   bash benchmarks/device_release.sh bench        # anyattn bench (fwd, bwd, decode), host overhead, Triton bwd modes
#   bash benchmarks/device_release.sh models       # transformers models: anyattn beside the others
# Wheels (see DEVELOPERS.md): flash-attn-4 4.0.0b36, nvidia-cutlass-dsl 4.8.1 + libs-base/core/cu13,
# quack-kernels, apache-tvm-ffi, torch-c-dlpack-ext, flashinfer-python 0.7.2.post1, cuda-tile,
# nvidia-cudnn-frontend. They go into /tmp/site in ONE pip call: the libs wheels share the
# nvidia_cutlass_dsl/ folder and a second --target install wipes it. --target skips the meta
# package's .pth, so dsl_packages goes on PYTHONPATH by hand.
set -o pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT" /tmp/wheels
export PYTHONPATH=/tmp/site:/tmp/site/nvidia_cutlass_dsl/dsl_packages:.
export ANYATTN_CACHE_DIR=/tmp/anyattn-cache FLASH_ATTENTION_CUTE_DSL_CACHE_ENABLED=1
PYTEST="python3 -m pytest -m gpu -q -p no:cacheprovider -rfE --timeout=240"
case "${1:-}" in
stash)
  for d in .whl1 .whl2 .whl3; do [ -d "$d" ] && cp "$d"/* /tmp/wheels/; done
  ls -la /tmp/wheels | tail -n +2
  ;;
install)
  for d in .whl1 .whl2 .whl3; do [ -d "$d" ] && cp "$d"/* /tmp/wheels/; done
  cat /tmp/wheels/cu13.part.* > /tmp/wheels/nvidia_cutlass_dsl_libs_cu13-4.8.1-cp312-cp312-manylinux_2_28_x86_64.whl
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site /tmp/wheels/*.whl \
    2>&1 | tail -3
  nvidia-smi --query-gpu=name,driver_version,clocks.sm --format=csv,noheader
  python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
  python3 -c "import time; t=time.time(); import flash_attn.cute; print('import flash_attn.cute %.1f s' % (time.time()-t))"
  python3 -c "import time; t=time.time(); import flashinfer; print('import flashinfer', flashinfer.__version__, '%.1f s' % (time.time()-t))"
  python3 -m anyattn backends 2>&1 | tee "$OUT/backends.txt"
  python3 -m anyattn which --dtype bf16 --head-dim 128 --causal 2>&1 | tee "$OUT/which.txt"
  timeout 120 python3 -m anyattn doctor --bundle "$OUT/bundle.md" --save-facts "$OUT/device_facts.json" \
    > "$OUT/doctor.txt" 2>&1; echo "doctor exit: $?"; tail -25 "$OUT/doctor.txt"
  ;;
tests)
  # every GPU test (launch plans verified against Triton's own specialisation), the GPU fuzz
  # among them (9 runs x ANYATTN_FUZZ_GPU_EXAMPLES cases; xdist spreads them, so the counts
  # test that needs one process is left out and the per-run lines are summed from the log)
  ANYATTN_TRITON_VERIFY_PLANS=1 ANYATTN_FLEX_COMPILE=0 ANYATTN_FUZZ_LOG="$OUT/fuzz_counts.txt" \
    timeout ${TESTS_TIMEOUT:-480} $PYTEST tests -n 12 -k "not flashinfer and not test_fuzz_gpu_counts" \
    > "$OUT/pytest_gpu.log" 2>&1
  echo "pytest exit: $?"; grep -v "^DEBUG" "$OUT/pytest_gpu.log" | grep -E "^(FAILED|ERROR)|passed|failed" | head -40
  python3 -m tests.test_fuzz --summary "$OUT/fuzz_counts.txt" 2>&1 | tee "$OUT/fuzz_summary.txt"
  ;;
flashinfer)
  timeout 540 $PYTEST tests/test_gpu_vendor.py -n 8 -k flashinfer -rP > "$OUT/pytest_flashinfer.log" 2>&1
  echo "pytest exit: $?"; grep -E "cold start|passed|failed|Error" "$OUT/pytest_flashinfer.log" | tail -30
  ;;
bench)
  timeout 120 python3 -m anyattn.bench_overhead --profile --json "$OUT/overhead.json" > "$OUT/overhead.txt" 2>&1
  timeout 330 python3 -m anyattn bench --quick --backends ${BENCH_BACKENDS:-triton,flash_attn_4,sdpa_cudnn,sdpa_flash} \
    --json "$OUT/bench.json" > "$OUT/bench.log" 2>&1
  echo "bench exit: $?"; tail -n 70 "$OUT/bench.log"; grep -A45 "host µs per call" "$OUT/overhead.txt" | head -60
  timeout 100 python3 benchmarks/triton_backward_modes.py --quick 2>&1 | tee "$OUT/backward_modes.txt"
  ;;
models)
  timeout 560 python3 -m anyattn.integrations.hf_bench --out "$OUT" --budget ${HF_BUDGET:-330} > "$OUT/hf_bench.log" 2>&1
  echo "hf_bench exit: $?"; tail -n 60 "$OUT/hf_bench.log"
  ;;
*)
  echo "usage: bash benchmarks/device_release.sh stash|install|tests|flashinfer|bench|models"; exit 2;;
esac
