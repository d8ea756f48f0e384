# syntax=docker/dockerfile:1
# Build stage: dependencies are compiled in their own layer, so a change to
# the sources rebuilds only the crate itself.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src benches/bench && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && echo 'fn main() {}' > benches/bench/main.rs \
    && cargo build --release --locked \
    && rm -rf src target/release/deps/audit_alert* target/release/audit-alert*
COPY build.rs ./
COPY db ./db
COPY src ./src
RUN cargo build --release --locked

# Runtime stage: the binary, CA certificates for SMTP over TLS, a non-root user.
FROM debian:bookworm-slim
# Debian's current versions: pinned ones disappear from the archive.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /app audit
COPY --from=build /src/target/release/audit-alert /usr/local/bin/audit-alert
WORKDIR /app
# Numeric, so that a runtime can tell it is not root (runAsNonRoot).
USER 10001
ENV API_HOST=0.0.0.0 API_PORT=8000
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s \
    CMD ["curl", "-fsS", "-o", "/dev/null", "http://127.0.0.1:8000/health"]
# `serve` applies pending migrations before it starts.
ENTRYPOINT ["audit-alert"]
CMD ["serve"]
