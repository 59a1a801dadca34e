# `make bench`: every benchmark in bench/ (see docs/benchmarks.md); needs PostgreSQL and Redis on localhost
# (or DATABASE_URL/REDIS_URL), and mosquitto on the PATH (the bench starts its own broker on a free port).
PYTHON ?= .venv/bin/python

.PHONY: bench
bench:
	$(PYTHON) -u -m bench $(BENCH_ARGS)
