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

# Reproduces the bundled demo model (searchengine/weights/demo.pt) from generated scenes:
# four stages with hard negatives, the last two at 128 px (docs/demo.md; about five hours on
# two cores).
DEMO := runs/demo-model
DEMO_TRAIN := --weight-decay 0.1 --batch-size 128 --eval-every 500 --save-every 500 \
	--hard-negatives both --swap-vocabulary searchengine/demo/scene_vocabulary.txt \
	--swaps-per-caption 3 --refresh-every 500
demo-model: install
	rm -rf $(DEMO)/stage1 $(DEMO)/stage2 $(DEMO)/stage3 $(DEMO)/stage4  # train never starts over a run folder
	$(BIN)/searchengine scenes $(DEMO)/train -n 40000 --split train --seed 3 \
		--free-colour 0.3 --generic-nouns 0.2
	$(BIN)/searchengine scenes $(DEMO)/train-b -n 40000 --split train --seed 4 \
		--free-colour 0.3 --generic-nouns 0.2
	$(BIN)/searchengine scenes $(DEMO)/val -n 300 --split heldout --seed 1
	$(BIN)/searchengine train $(DEMO)/train --val $(DEMO)/val --out $(DEMO)/stage1 \
		--model se-scenes-rn/random --lr 1e-3 --warmup 100 --steps 3500 --seed 0 $(DEMO_TRAIN)
	$(BIN)/searchengine train $(DEMO)/train-b --val $(DEMO)/val --out $(DEMO)/stage2 \
		--model se-scenes-rn/$(DEMO)/stage1/last.pt --lr 3e-4 --warmup 50 --steps 3500 --seed 1 \
		$(DEMO_TRAIN)
	$(BIN)/searchengine train $(DEMO)/train --val $(DEMO)/val --out $(DEMO)/stage3 \
		--model se-scenes-rn128/$(DEMO)/stage2/last.pt --lr 1e-4 --warmup 50 --steps 2000 \
		--seed 2 $(DEMO_TRAIN)
	$(BIN)/searchengine train $(DEMO)/train-b --val $(DEMO)/val --out $(DEMO)/stage4 \
		--model se-scenes-rn128/$(DEMO)/stage3/last.pt --lr 1e-4 --warmup 50 --steps 2000 \
		--seed 3 $(DEMO_TRAIN)
	$(BIN)/python -c "from searchengine.demo.run import bundle_weights; print(bundle_weights('$(DEMO)/stage4/last.pt'))"
	$(BIN)/searchengine scenes $(DEMO)/heldout -n 1000 --split heldout --seed 0
	$(BIN)/searchengine scene-recall $(DEMO)/heldout --model demo
	$(BIN)/searchengine scenes $(DEMO)/heldout-7 -n 1000 --split heldout --seed 7
	$(BIN)/python bench/hard_negatives.py $(DEMO)/heldout-7 demo

clean:
	rm -rf $(VENV) indexes/*.sqlite* indexes/vectors
