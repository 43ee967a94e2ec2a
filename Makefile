# labkit workbench: the two set-up commands are `make book` and `make test` (see README.md).
#
#   make book [PROFILE=cpu|smoke|gpu]   build the executed book into _build/html
#   make test                           unit tests + every notebook (smoke profile) through nbmake
#   make check-book [PROFILE=smoke]     build the book, then check the site in headless Chromium
#   make lab                            JupyterLab in notebooks/
#   make clean                          remove the build, caches and the virtual environment

PROFILE ?= cpu
PYTHON ?= python3
VENV ?= .venv
# torch is installed only when it is missing, so a GPU or Colab build already present is kept.
TORCH_SPEC ?= torch==2.13.0
BOOK_FLAGS ?= -W --keep-going

# Use the active virtual environment (or conda environment) when there is one; otherwise .venv.
ifneq ($(strip $(VIRTUAL_ENV)$(CONDA_PREFIX)),)
  PY := python
  BIN :=
  ENV_STAMP := .labkit-env-active
else
  PY := $(VENV)/bin/python
  BIN := $(VENV)/bin/
  ENV_STAMP := $(VENV)/bin/python
endif

.PHONY: book test check-book lab clean install-book install-dev bench help torch

help:
	@sed -n '1,8p' Makefile

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip

.labkit-env-active:
	@true

torch: $(ENV_STAMP)
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet "$(TORCH_SPEC)"

install-book: torch
	$(PY) -m pip install --quiet -e ".[book]"

install-dev: torch
	$(PY) -m pip install --quiet -e ".[dev]"

# The execution cache is keyed on the notebooks' code by jupyter-cache; this adds labkit/ and the
# profile to the key: when either changes, the cache is cleared and every notebook re-runs.
# Modules that only render the book (tables, the classroom tools) are left out of the key.
RENDER_ONLY := ! -name bookext.py ! -name claims.py ! -name classroom.py

book: install-book
	@key="$(PROFILE)-$$(cat pyproject.toml $$(find labkit -name '*.py' $(RENDER_ONLY) | LC_ALL=C sort) | $(PY) -c 'import hashlib,sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest()[:16])')"; \
	  if [ "$$(cat _build/.labkit-cache-key 2>/dev/null)" != "$$key" ]; then \
	    echo "labkit or profile changed ($$key): clearing the execution cache"; \
	    rm -rf _build/.jupyter_cache _build/jupyter_execute _build/.doctrees; \
	  fi; \
	  mkdir -p _build && echo "$$key" > _build/.labkit-cache-key
	LABKIT_PROFILE=$(PROFILE) $(BIN)jupyter-book build . $(BOOK_FLAGS)
	@echo "The book is in _build/html/index.html"

test: install-dev
	LABKIT_PROFILE=smoke $(PY) -m pytest tests notebooks --nbmake --nbmake-timeout=300 -p no:cacheprovider

# The built site opened in headless Chromium (Playwright): every chapter page, math, figures, tracebacks,
# internal links, hidden solutions, launch buttons. Uses /usr/bin/chromium or $$LABKIT_CHROMIUM when present,
# else Playwright's own browser (`python -m playwright install chromium`).
check-book: book install-dev
	LABKIT_BOOK_HTML=_build/html $(PY) -m pytest tests/test_book_site.py -p no:cacheprovider -q

lab: install-book
	$(PY) -m jupyter lab notebooks/

bench: install-dev
	$(PY) -m labkit.bench --profile $(PROFILE)

clean:
	rm -rf _build $(VENV) student instructor .pytest_cache *.egg-info
	find . -name __pycache__ -prune -exec rm -rf {} +
