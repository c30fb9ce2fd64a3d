# hashsearch: `make demo` and `make test` set everything up from a fresh clone.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
SHARED ?= ../shared
CIFAR  ?= $(SHARED)/datasets/cifar10-jpg.tar.gz
export HASHSEARCH_CIFAR10 ?= $(abspath $(CIFAR))

.PHONY: setup browser lint demo test test-distributed serve eval-core bench-methods bench-ablation bench-unseen bench-search bench-rerank bench-encode bench-load bench-recipe bench-finetune bench-beyond-cifar clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev,search,serve,distributed]'
	# imagededup (a peer in benchmarks/duplicates.py) without its torchvision: no build of it fits the CPU torch, and its hash methods need none
	$(BIN)/pip install -q --no-deps imagededup==0.3.3.post2
	touch $@

setup: $(VENV)/.installed

# Debian's Chromium, for the web page's end-to-end test (Playwright drives it).
CHROMIUM ?= /usr/bin/chromium
browser: $(CHROMIUM)
$(CHROMIUM):
	@echo "installing Debian's chromium for the browser test"
	$(if $(filter 0,$(shell id -u)),,sudo) apt-get update -qq
	$(if $(filter 0,$(shell id -u)),,sudo) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium

demo: setup
	$(BIN)/hashsearch demo

test: setup browser lint
	$(BIN)/python -m pytest -q -m "not distributed and not slow"

# Tests that start real servers and clusters (a Milvus standalone server, a two-node Ray cluster), and the
# slow integration tests (a save killed at every step, RITQ/DHFI networks trained from scratch): CI runs both targets.
test-distributed: setup
	$(BIN)/python -m pytest -q -m "distributed or slow"

# Lint and format (ruff), the import contract of the data flow (import-linter), types of the public modules (mypy).
lint: setup
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/lint-imports
	$(BIN)/mypy

# The web page and HTTP API over an index (default: the one `make demo` wrote):
#   make serve [INDEX=photos.hsx]
serve: setup
	$(BIN)/hashsearch serve $${INDEX:-$$($(BIN)/python -c "from hashsearch.paths import cache_dir; print(cache_dir() / 'demo.hsx')")}

# The committed core benchmark (full cifar10-1k protocol, 59,000-image database).
eval-core: setup
	$(BIN)/hashsearch eval --protocol cifar10-1k --method lsh,pcah,pca-rr,itq,dlbhc \
		--bits 16,32,48,64 --out benchmarks/results/cifar10-1k-core

# Issue 3: every method with the papers' numbers; DFEH's ablations; the unseen-classes protocol.
bench-methods: setup
	$(BIN)/hashsearch bench --protocol cifar10-1k --methods all --bits 12,16,24,32,48,64 \
		--out benchmarks/results/cifar10-1k

bench-ablation: setup
	$(BIN)/hashsearch eval --protocol cifar10-1k --bits 48 --out benchmarks/results/dfeh-ablation --method \
		'dfeh[lambda_q=0,lambda_b=0],dfeh[lambda_q=0.1,lambda_b=0.1],dfeh[lambda_q=0.01,lambda_b=0.01],dfeh[lambda_q=0.001,lambda_b=0.001],dfeh[use_contrastive=false],dfeh[lambda_q=0],dfeh[lambda_b=0]'

bench-unseen: setup
	$(BIN)/hashsearch eval --protocol unseen-classes --bits 48 --out benchmarks/results/unseen-classes \
		--method lsh,itq,cca-itq,ksh,sdh,ritq,dlbhc,dpsh,dsh,dfeh,hashnet,csq,dhfi

# Issue 4: every index back end on a million learned codes.
bench-search: setup
	$(BIN)/python benchmarks/search_scale.py --out benchmarks/results/search.md

bench-rerank: setup
	$(BIN)/python benchmarks/coarse_to_fine.py

bench-encode: setup
	$(BIN)/python benchmarks/encode.py --out benchmarks/results/encode.md
	$(BIN)/python benchmarks/ray_start.py --out benchmarks/results/ray-start.md
	$(BIN)/python benchmarks/decode_cost.py --out benchmarks/results/decode-cost.md
	$(BIN)/python benchmarks/encode_memory.py --out benchmarks/results/encode-memory.md

bench-load: setup
	$(BIN)/python benchmarks/load.py

# Issue 20: the fine-tuning recipe lever by lever, then every deep method in finetune mode at 48 bits
# (hours on 2 cores; each writes its results as it goes, and a rerun skips what is done).
# The scripts run `hashsearch ...` commands: the venv's bin comes first on PATH.
bench-recipe: setup
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python benchmarks/recipe.py

bench-finetune: setup
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python benchmarks/finetune_all.py

# Issue 20.5: the RITQ paper's MNIST column (mnist-table2-5k) and flowers12 photos in head and finetune
# mode; runs the benches whose results are missing (about 35 minutes on 2 cores), then prints the tables.
bench-beyond-cifar: setup
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python benchmarks/beyond_cifar.py

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis tests/service/artifacts
