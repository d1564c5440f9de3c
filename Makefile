# Two commands set everything up on a fresh machine: `make run` and `make test`.
# GPU=1 installs faiss-gpu instead of faiss-cpu (see README, "GPU").
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
FAISS_EXTRA := $(if $(GPU),gpu,cpu)
STAMP := $(VENV)/.installed-$(FAISS_EXTRA)

.PHONY: run test install lint docs clean demo-model postgresql-server

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip setuptools wheel

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[$(FAISS_EXTRA),dev,heif,serve,ray,postgres]'
	rm -f $(VENV)/.installed-*
	touch $@

install: $(STAMP)

run: install
	$(BIN)/searchengine demo --home indexes

CHROMIUM := /usr/bin/chromium

# tests/test_browser.py drives Debian's chromium through Playwright and skips without it.
# As root with apt (CI) install it; elsewhere say how.
$(CHROMIUM):
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	else echo "no $(CHROMIUM): tests/test_browser.py will skip (sudo apt-get install chromium)"; fi

# The PostgreSQL catalog's tests start a throwaway server of Debian's binaries (tests/postgres.py)
# and skip without them. As root with apt (CI) install the package; elsewhere say how.
PG_CTL := $(firstword $(wildcard /usr/lib/postgresql/*/bin/pg_ctl))

postgresql-server:
	@if [ -n "$(PG_CTL)" ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql; \
	else echo "no PostgreSQL server: the PostgreSQL catalog tests will skip (sudo apt-get install postgresql)"; fi

test: install $(CHROMIUM) postgresql-server
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check searchengine tests bench migrations
	$(BIN)/python -m mypy  # over searchengine/, as configured in pyproject.toml

docs: install
	$(BIN)/python -m searchengine.docgen > docs/cli.md

# Reproduces the bundled demo model (searchengine/weights/demo.pt) from generated scenes.
demo-model: install
	rm -rf runs/demo-model/run runs/demo-model/run2  # train never starts over a run folder
	$(BIN)/searchengine scenes runs/demo-model/train -n 20000 --split train --seed 0
	$(BIN)/searchengine scenes runs/demo-model/val -n 500 --split heldout --seed 1
	$(BIN)/searchengine train runs/demo-model/train --val runs/demo-model/val \
		--model se-scenes/random --out runs/demo-model/run --lr 1e-3 --weight-decay 0.1 \
		--batch-size 128 --steps 2000 --eval-every 200 --save-every 200 --seed 0
	$(BIN)/searchengine scenes runs/demo-model/train2 -n 20000 --split train --seed 2
	$(BIN)/searchengine train runs/demo-model/train2 --val runs/demo-model/val \
		--model se-scenes/runs/demo-model/run/last.pt --out runs/demo-model/run2 --lr 3e-4 \
		--warmup 50 --weight-decay 0.1 --batch-size 128 --steps 800 --eval-every 200 \
		--save-every 200 --seed 1
	$(BIN)/python -c "from searchengine.demo.run import bundle_weights; print(bundle_weights('runs/demo-model/run2/best.pt'))"
	$(BIN)/searchengine scenes runs/demo-model/heldout -n 1000 --split heldout --seed 0
	$(BIN)/searchengine scene-recall runs/demo-model/heldout --model demo

clean:
	rm -rf $(VENV) indexes/*.sqlite* indexes/vectors
