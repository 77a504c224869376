#!/usr/bin/env bash
# The GPU checks (issue 16), as one call of the workplace's device tool, well inside its 10 minutes:
# the CUDA-only tests, then the benchmark's GPU rows (HF generate with and without its static cache,
# korepl's eager step on each precision, and the model's forward compiled on CUDA graphs).
#
# The device machine has torch and most of transformers' needs, but not korepl's other packages. Here, once,
# from the repository root (.whl/ stays out of git):
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
#     transformers==5.24.0 tokenizers==0.23.3 huggingface_hub==2.4.0 safetensors==0.8.0 prompt_toolkit==3.0.53 \
#     wcwidth==0.9.4 platformdirs==4.14.8 pexpect==4.9.0 ptyprocess==0.7.0
# then run this with the device tool: command "bash scripts/gpu_check.sh", carry [".whl"], timeout_s 540.
set -uo pipefail
OUT=${OUT:-/tmp/gpu-check}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  || { echo "gpu_check: the wheels in .whl/ did not install (see the comment at the top)"; exit 1; }
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" \
  | tee -a "$OUT/gpu.txt"
# The CUDA tests: the device choice, and another model's forward replayed as CUDA graphs (tests/test_compiled.py).
timeout 200 python3 -m pytest -q -p no:cacheprovider tests/test_loading.py tests/test_compiled.py \
  -k "cuda or gpu" 2>&1 | tee "$OUT/tests.log"
# The benchmark's GPU rows, KoGPT2's shape (random weights, built on the machine).
timeout 300 python3 benchmarks/bench.py --device cuda --sections decoding,paths,compiled,hf_static \
  --out "$OUT/bench.json" 2> "$OUT/bench.err" | tee "$OUT/bench.md"
tail -5 "$OUT/bench.err"
