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

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings
