# tidemark: build with the Rust toolchain, run from a small Debian image as a non-root user.
#   docker build -t tidemark .
#   docker run --rm -e DATABASE_URL=postgres://… -e TIDEMARK_ADMIN_TOKEN=$(openssl rand -hex 32) \
#     -p 8080:8080 -v tidemark-exports:/data/output tidemark
# It listens on 0.0.0.0, so it refuses to start without a token (TIDEMARK_ADMIN_TOKEN or one
# made with `tidemark token create`).

FROM rust:1-bookworm AS build
WORKDIR /src
# Dependencies first, so that editing the sources does not rebuild them.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && cargo build --release --locked --bin tidemark \
    && rm -rf src target/release/.fingerprint/tidemark-*
COPY src ./src
RUN cargo build --release --locked --bin tidemark \
    && strip target/release/tidemark

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /data --shell /usr/sbin/nologin tidemark \
    && mkdir -p /data/output \
    && chown -R tidemark:tidemark /data
COPY --from=build /src/target/release/tidemark /usr/local/bin/tidemark
USER tidemark
WORKDIR /data
ENV TIDEMARK_LISTEN=0.0.0.0:8080 \
    TIDEMARK_OUTPUT_DIR=/data/output \
    RUST_LOG=info \
    TIDEMARK_LOG_FORMAT=json
EXPOSE 8080
VOLUME ["/data/output"]
# SIGTERM lets running exports finish within TIDEMARK_GRACE_SECS (default 30 s).
STOPSIGNAL SIGTERM
ENTRYPOINT ["tidemark"]
CMD ["serve"]
