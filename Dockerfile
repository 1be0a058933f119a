# syntax=docker/dockerfile:1
# The etl-engine container image: a Rust build stage (dependencies compiled in their own cached
# layer, so editing the sources does not rebuild them) and a slim Debian runtime that runs the
# engine as an unprivileged user. Build: `docker build -t etl-engine .`

FROM rust:1-bookworm AS builder
WORKDIR /build
# Dependencies first: this layer is reused until Cargo.toml or Cargo.lock change.
COPY Cargo.toml Cargo.lock ./
RUN mkdir src \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && cargo build --release --locked \
    && rm -rf src
COPY src ./src
# COPY keeps the sources' old timestamps; touching them makes cargo rebuild the crate itself
# instead of keeping the placeholder binary from the layer above.
RUN touch src/main.rs src/lib.rs \
    && cargo build --release --locked \
    && strip target/release/etl-engine

FROM debian:bookworm-slim
# CA certificates for TLS to AWS and Postgres. Versions are not pinned on purpose: a rebuild
# should pick up security fixes.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*
RUN groupadd --system --gid 10001 etl \
    && useradd --system --uid 10001 --gid etl --no-create-home --shell /usr/sbin/nologin etl
COPY --from=builder /build/target/release/etl-engine /usr/local/bin/etl-engine
# Example specs, so `docker run etl-engine validate /specs/logins.yaml` works; deployments mount their own.
COPY specs /specs
USER 10001:10001
# Prometheus metrics, when run with --metrics-addr 0.0.0.0:9898.
EXPOSE 9898
ENTRYPOINT ["etl-engine"]
CMD ["--help"]
