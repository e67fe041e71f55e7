# The two commands README.md opens with: `make demo` and `make test`.
# Each installs what it needs first (scripts/bootstrap.sh is idempotent).

PY := .venv/bin/python

.PHONY: demo test unit lint bench bootstrap

bootstrap:
	@scripts/bootstrap.sh --services

demo: bootstrap
	@$(PY) -m vmwrapper.demo

test: bootstrap
	@$(PY) -m ruff check .
	@$(PY) -m pytest tests -q --durations=30

unit: bootstrap
	@$(PY) -m pytest tests/unit -q

lint: bootstrap
	@$(PY) -m ruff check .

bench: bootstrap
	@for b in bench/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done
