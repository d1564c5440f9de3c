# Two commands set everything up on a fresh machine: `make run` and `make test`.
# GPU=1 installs faiss-gpu instead of faiss-cpu (see README, "GPU").
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
FAISS_EXTRA := $(if $(GPU),gpu,cpu)
STAMP := $(VENV)/.installed-$(FAISS_EXTRA)

.PHONY: run test install lint docs bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip setuptools wheel

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[$(FAISS_EXTRA),dev,heif,serve]'
	rm -f $(VENV)/.installed-*
	touch $@

install: $(STAMP)

run: install
	$(BIN)/searchengine demo --home indexes

test: install
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check searchengine tests bench migrations

docs: install
	$(BIN)/python -m searchengine.docgen > docs/cli.md

clean:
	rm -rf $(VENV) indexes/*.sqlite* indexes/vectors
