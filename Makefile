# Two commands: `make run` (set up, then the whole pipeline) and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test setup clean

run: $(STAMP)
	PATH=$(CURDIR)/$(BIN):$$PATH DVC_NO_ANALYTICS=1 dvc repro

test: $(STAMP)
	PATH=$(CURDIR)/$(BIN):$$PATH DVC_NO_ANALYTICS=1 python -m pytest $(PYTEST_ARGS)

setup: $(STAMP)

# torch is pinned to the CPU build that lies on this disk; installing it first
# keeps pip from resolving any other torch (a CUDA build of several GB).
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

clean:
	rm -rf $(VENV)
