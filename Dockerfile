# The runtime stage is shared with `make image` (scripts/image.sh), which builds it from a
# debootstrapped Debian base and a binary built on the host:
#   --build-arg RUNTIME_BASE=<base image>  --build-arg BINARY_SOURCE=<image holding /tollgate>
ARG RUNTIME_BASE=debian:bookworm-slim
ARG BINARY_SOURCE=build

# Build: the `dist` binary (fat LTO, the fastest code; README "Build profiles"), with the
# system libraries Pingora's build needs.
FROM rust:1-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends cmake pkg-config libssl-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY lua ./lua
# Embedded in the binary (include_str!).
COPY migrations ./migrations
# Declared in Cargo.toml, so the manifest needs it even for a plain build.
COPY benches ./benches
# Cache mounts keep the registry and the dependencies' build between image builds.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --profile dist --locked --bin tollgate \
    && strip target/dist/tollgate && cp target/dist/tollgate /tollgate

# Where the binary comes from: the stage above, or (make image) a prebuilt one.
FROM ${BINARY_SOURCE} AS binary

# Run: a small image with only the binary (OpenSSL is linked in) and CA certificates (no curl: the
# health check is `tollgate health`).
FROM ${RUNTIME_BASE} AS runtime
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin tollgate
COPY --from=binary /tollgate /usr/local/bin/tollgate
COPY deploy/image/tollgate.yaml /etc/tollgate/tollgate.yaml
USER tollgate
# Mount your own configuration over /etc/tollgate. The pid file and upgrade socket go to /tmp.
VOLUME ["/etc/tollgate"]
EXPOSE 8080 8443 9091
HEALTHCHECK --interval=10s --timeout=3s --retries=3 CMD ["/usr/local/bin/tollgate", "health", "--url", "http://127.0.0.1:8080/health"]
ENTRYPOINT ["/usr/local/bin/tollgate"]
CMD ["-c", "/etc/tollgate/tollgate.yaml"]
