#!/usr/bin/env bash
# Regenerates tests/golden/<family>/ with Hugging Face transformers on torch (CPU).
# Needs a Python with torch + transformers: $GOLDEN_PYTHON, else .peers/torch311/bin/python
# (a Python 3.11 venv with torch 2.13.0+cpu and transformers 5.24).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
py=${GOLDEN_PYTHON:-}
if [ -z "$py" ]; then
  for candidate in "$root/.peers/torch311/bin/python" "$root/../main/.peers/torch311/bin/python"; do
    if [ -x "$candidate" ]; then py=$candidate; break; fi
  done
fi
[ -n "$py" ] || { echo "error: set GOLDEN_PYTHON to a Python with torch + transformers" >&2; exit 1; }
"$py" "$root/tests/golden/make_golden.py"
