# The two commands: `make run` (set up + main job on Fashion-MNIST) and `make test` (set up + tests);
# `make test-fast` is `make test` without the tests marked slow.
PY := .venv/bin/python
FLAGS ?= configs/fashion_mnist.flags
PYTEST_ARGS ?=
# pytest-xdist workers: on 2 cores two test processes keep both busy (one alone leaves one idle much of the time)
TEST_WORKERS ?= 2

.PHONY: setup setup-test run test test-fast smoke clean

setup:
	@bash scripts/setup.sh

setup-test:
	@bash scripts/setup.sh --test

run: setup
	$(PY) -m tfbnas.run --flagfile=$(FLAGS)

test: setup-test
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

test-fast: setup-test
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile -m "not slow" $(PYTEST_ARGS)

clean:
	rm -rf runs .pytest_cache
