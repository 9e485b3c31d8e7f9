#!/usr/bin/env bash
# Device calls for issue 8 (FlashAttention-4, FlashInfer, anyattn tune). Run from the repository root.
#   WHEELS=<dir with the 9 wheels> bash benchmarks/device_issue8.sh install
#   bash benchmarks/device_issue8.sh tests-fa4 | tests-fi | tests-rest | tune | bench | bench-quick
# The wheels go into /tmp/site in ONE pip call: nvidia-cutlass-dsl-libs-base and -libs-cu13 both
# ship files under nvidia_cutlass_dsl/dsl_packages/cutlass/_mlir, and pip --target merges only
# within one call. --target does not run the meta package's .pth file, so dsl_packages goes on
# PYTHONPATH by hand (without it: No module named 'cutlass'; without libs-base: 'cutlass._mlir').
set -o pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
export PYTHONPATH=/tmp/site:/tmp/site/nvidia_cutlass_dsl/dsl_packages:.
export ANYATTN_CACHE_DIR=${ANYATTN_CACHE_DIR:-/tmp/anyattn-cache}
case "${1:-}" in
install)
  WHEELS=${WHEELS:-.whl}
  python3 -m pip install --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site \
    "$WHEELS"/flash_attn_4-4.0.0b36-py3-none-any.whl \
    "$WHEELS"/nvidia_cutlass_dsl-4.8.1-py3-none-any.whl \
    "$WHEELS"/nvidia_cutlass_dsl_libs_base-4.8.1-cp312-cp312-manylinux_2_28_x86_64.whl \
    "$WHEELS"/nvidia_cutlass_dsl_libs_core-4.8.1-py3-none-any.whl \
    "$WHEELS"/nvidia_cutlass_dsl_libs_cu13-4.8.1-cp312-cp312-manylinux_2_28_x86_64.whl \
    "$WHEELS"/quack_kernels-0.6.5-py3-none-any.whl \
    "$WHEELS"/apache_tvm_ffi-0.1.15.post2-cp312-cp312-manylinux_2_24_x86_64.manylinux_2_28_x86_64.whl \
    "$WHEELS"/torch_c_dlpack_ext-0.1.5-cp312-cp312-manylinux_2_24_x86_64.manylinux_2_28_x86_64.whl \
    "$WHEELS"/flashinfer_python-0.7.2.post1-py3-none-any.whl 2>&1 | tail -3
  nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
  python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
  for m in einops pynvml requests tqdm ninja cuda.bindings; do
    python3 -c "import $m" 2>/dev/null && echo "have $m" || echo "MISSING $m"
  done
  python3 -c "import time; t=time.time(); import flash_attn.cute; print('import flash_attn.cute %.1f s' % (time.time()-t))"
  python3 -c "import time; t=time.time(); import flashinfer; print('import flashinfer', flashinfer.__version__, '%.1f s' % (time.time()-t))"
  which nvcc; echo "CUDA_HOME=${CUDA_HOME:-}"
  python3 -m anyattn backends 2>&1 | tee "$OUT/backends.txt"
  python3 -m anyattn which --dtype bf16 --head-dim 128 --causal 2>&1 | tee "$OUT/which.txt"
  ;;
tests-fa4)
  # cold-start costs first, with FA4's on-disk kernel cache off, then the rest with it on
  timeout 200 python3 -m pytest -m gpu tests/test_gpu_vendor.py -q -p no:cacheprovider -rP \
    -k "first_call_costs and flash_attn_4" 2>&1 | grep -E "cold start|passed|failed|skipped|Error" | tee "$OUT/fa4_cold.log"
  FLASH_ATTENTION_CUTE_DSL_CACHE_ENABLED=1 timeout 520 python3 -m pytest -m gpu tests/test_gpu_vendor.py -q -n 8 \
    -p no:cacheprovider -rfE -k "flash_attn_4 and not first_call" > "$OUT/pytest_fa4.log" 2>&1
  tail -40 "$OUT/pytest_fa4.log"
  ;;
tests-fi)
  # FlashInfer JIT-compiles every kernel variant with nvcc on its first use (minutes in all);
  # its cache (~/.cache/flashinfer) survives between calls while the machine stays warm.
  timeout 300 python3 -m pytest -m gpu tests/test_gpu_vendor.py -q -p no:cacheprovider -rP \
    -k "first_call_costs and flashinfer" 2>&1 | grep -E "cold start|passed|failed|skipped|Error" | tee "$OUT/fi_cold.log"
  timeout 560 python3 -m pytest -m gpu tests/test_gpu_vendor.py -q -n 8 -p no:cacheprovider -rfE \
    -k "flashinfer and not first_call" > "$OUT/pytest_fi.log" 2>&1
  tail -40 "$OUT/pytest_fi.log"
  ;;
tests-rest)
  FLASH_ATTENTION_CUTE_DSL_CACHE_ENABLED=1 timeout 560 python3 -m pytest -m gpu tests -q -n 8 -p no:cacheprovider \
    -rfE --ignore=tests/test_gpu_vendor.py > "$OUT/pytest_gpu_rest.log" 2>&1
  tail -30 "$OUT/pytest_gpu_rest.log"
  ;;
tune)
  FLASH_ATTENTION_CUTE_DSL_CACHE_ENABLED=1 timeout 580 python3 -m anyattn tune ${TUNE_ARGS:-} \
    > "$OUT/tune.log" 2> "$OUT/tune_progress.log"; echo "tune exit: $?"
  tail -80 "$OUT/tune.log"; cp "$ANYATTN_CACHE_DIR"/tune-v1-*.json "$OUT/" 2>/dev/null
  ;;
bench|bench-quick)
  q=""; [ "$1" = bench-quick ] && q="--quick"
  FLASH_ATTENTION_CUTE_DSL_CACHE_ENABLED=1 timeout 580 python3 -m anyattn bench $q --json "$OUT/bench_issue8.json" \
    > "$OUT/bench_issue8.log" 2>&1; echo "bench exit: $?"
  tail -n 90 "$OUT/bench_issue8.log"
  ;;
*)
  echo "usage: bash benchmarks/device_issue8.sh install|tests-fa4|tests-fi|tests-rest|tune|bench|bench-quick"; exit 2;;
esac
