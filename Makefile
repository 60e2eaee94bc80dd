# tollgate: `make run` serves conf/tollgate.yaml with a demo upstream; `make test` runs
# every test against real servers. Both install what this machine lacks (apt, as root).

CARGO ?= cargo
CONFIG ?= conf/tollgate.yaml

.PHONY: run test bench build check lint deps test-deps bench-deps

deps:
	@scripts/ensure-deps.sh build

test-deps:
	@scripts/ensure-deps.sh test

bench-deps:
	@scripts/ensure-deps.sh bench

build: deps
	$(CARGO) build --release

## Start the gateway on $(CONFIG) plus the demo upstream (tollgate echo on 127.0.0.1:9000).
run: build
	@echo "demo upstream on 127.0.0.1:9000; gateway on :8080; metrics on 127.0.0.1:9091"
	@echo "try:  curl -i http://127.0.0.1:8080/hello"
	@./target/release/tollgate echo --listen 127.0.0.1:9000 & echo_pid=$$!; \
	  trap 'kill $$echo_pid 2>/dev/null' EXIT INT TERM; \
	  ./target/release/tollgate -c $(CONFIG)

## Unit and integration tests (real tollgate binary, upstreams, Redis, PostgreSQL).
test: test-deps
	$(CARGO) test --all-targets --no-fail-fast

## Validate the config file.
check: deps
	$(CARGO) run --release -- check -c $(CONFIG)

## Benchmarks (not part of `make test`): tollgate against nginx with wrk, pinned to CPUs, idle-
## connection memory, 1,000 routes / 100,000 keys, then the criterion micro-benchmarks
## (cargo bench --bench hot_path). Results: loadtest/RESULTS.md. About 8 minutes; options via
## BENCH_ARGS, e.g. make bench BENCH_ARGS="--quick --no-criterion" (see loadtest/bench.py --help).
BENCH_ARGS ?=
bench: bench-deps
	@command -v python3 >/dev/null || { echo "make bench needs python3 (apt-get install python3)" >&2; exit 1; }
	$(CARGO) build --release
	python3 loadtest/bench.py $(BENCH_ARGS)

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings
