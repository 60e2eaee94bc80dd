# tollgate: `make run` serves conf/tollgate.yaml with a demo upstream; `make test` runs
# every test against real servers. Both install what this machine lacks (apt, as root).

CARGO ?= cargo
CONFIG ?= conf/tollgate.yaml

.PHONY: run test bench bench-profiles build check lint deps test-deps bench-deps image

deps:
	@scripts/ensure-deps.sh build

test-deps:
	@scripts/ensure-deps.sh test

bench-deps:
	@scripts/ensure-deps.sh bench

## The release profile: a few minutes cold, still fast (README, "Build profiles").
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

## Benchmarks (not part of `make test`): tollgate against a bare Pingora proxy (the
## reference), nginx and the upstream, pinned to CPUs, interleaved rounds at 64 and 256
## connections, an open-loop case (oha), idle-connection memory, 1,000 routes / 100,000 keys,
## then the criterion micro-benchmarks (cargo bench --profile dist --bench hot_path). Everything is built with
## the dist profile (fat LTO: the fastest code, the slowest build). Results:
## loadtest/RESULTS.md. About 20 minutes; options via BENCH_ARGS, e.g.
## make bench BENCH_ARGS="--quick --no-criterion" (see python3 loadtest/bench.py --help).
BENCH_ARGS ?=
bench: bench-deps
	@command -v python3 >/dev/null || { echo "make bench needs python3 (apt-get install python3)" >&2; exit 1; }
	$(CARGO) build --profile dist --bin tollgate --example bare_pingora
	python3 loadtest/bench.py --profile dist $(BENCH_ARGS)

## The release and dist profiles side by side (plain and API-key cases, --quick): the
## throughput figures of README "Build profiles".
bench-profiles: bench-deps
	$(CARGO) build --release --bin tollgate
	$(CARGO) build --profile dist --bin tollgate --example bare_pingora
	python3 loadtest/bench.py --quick --profile dist --compare-profiles release --cases p,c,d \
	  --idle '' --no-criterion --out loadtest/RESULTS-profiles.md $(BENCH_ARGS)

## The runtime image (the Dockerfile's runtime stage) built with buildah on a debootstrapped
## Debian base, then started: tollgate check, a proxied request and tollgate health inside it.
## No Docker engine or registry needed; needs root. TOLLGATE_BIN=path skips the release build.
image:
	scripts/image.sh

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings
