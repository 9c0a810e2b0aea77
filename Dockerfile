# syntax=docker/dockerfile:1
# Multi-stage build: compile with the Rust toolchain, ship only the binary on a slim base.
# The container expects DATABASE_URL (it carries no Postgres binaries for the embedded
# default); see docker-compose.yml.

FROM rust:1-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY crates ./crates
COPY src ./src
COPY migrations ./migrations
COPY config ./config
# Without the default `sim` feature: the image carries no PartnerStack stand-in (no
# `simulate` or `demo` command, no /admin routes).
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --no-default-features -p partnerstack-sync \
 && cp target/release/partnerstack-sync /usr/local/bin/partnerstack-sync \
 && strip /usr/local/bin/partnerstack-sync

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 10001 psync \
 && useradd --uid 10001 --gid psync --no-create-home --shell /usr/sbin/nologin psync
COPY --from=build /usr/local/bin/partnerstack-sync /usr/local/bin/partnerstack-sync
USER 10001:10001
ENV PSYNC_LISTEN=0.0.0.0:8080 \
    PSYNC_LOG_FORMAT=json
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["partnerstack-sync", "healthcheck"]
ENTRYPOINT ["partnerstack-sync"]
CMD ["serve"]
