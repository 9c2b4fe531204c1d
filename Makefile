# The two commands: `make run` (set up + main job on Fashion-MNIST) and `make test` (set up + tests).
PY := .venv/bin/python
FLAGS ?= configs/fashion_mnist.flags
PYTEST_ARGS ?=

.PHONY: setup setup-test run test smoke clean

setup:
	@bash scripts/setup.sh

setup-test:
	@bash scripts/setup.sh --test

run: setup
	$(PY) -m tfbnas.run --flagfile=$(FLAGS)

test: setup-test
	$(PY) -m pytest $(PYTEST_ARGS)

clean:
	rm -rf runs .pytest_cache
