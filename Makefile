# hashsearch: `make demo` and `make test` set everything up from a fresh clone.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
SHARED ?= ../shared
CIFAR  ?= $(SHARED)/datasets/cifar10-jpg.tar.gz
export HASHSEARCH_CIFAR10 ?= $(abspath $(CIFAR))

.PHONY: setup demo test eval-core bench-rerank clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev,search,serve,distributed]'
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(BIN)/hashsearch demo

test: setup
	$(BIN)/python -m pytest -q

# The committed core benchmark (full cifar10-1k protocol, 59,000-image database).
eval-core: setup
	$(BIN)/hashsearch eval --protocol cifar10-1k --method lsh,pcah,pca-rr,itq,dlbhc \
		--bits 16,32,48,64 --out benchmarks/results/cifar10-1k-core

bench-rerank: setup
	$(BIN)/python benchmarks/coarse_to_fine.py

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
