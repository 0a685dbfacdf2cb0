# syntax=docker/dockerfile:1
#
# scopegate container image: a release build of the one `scopegate` binary on a
# small Debian runtime, running as a non-root numeric user.
#
#   docker build -t scopegate:0.1.0 .
#   docker run --rm -p 8080:8080 -p 9464:9464 \
#     -v "$PWD/deploy/kubernetes/config:/etc/scopegate:ro" -e OPENAI_API_KEY scopegate:0.1.0
#
# The image holds no config: mount a folder with `scopegate.yaml` and its keys
# file at /etc/scopegate (Kubernetes: deploy/kubernetes/). Its addresses must be
# 0.0.0.0 (or [::]), not 127.0.0.1, to be reachable from outside the container.
# Needs BuildKit (the default builder since Docker 23) for the cache mounts.

# ---------------------------------------------------------------------------
# Build: the release profile of Cargo.toml, with exactly the locked dependencies.
FROM rust:1-bookworm AS build

# cmake: pingora builds zlib-ng with it. gcc, make and git come with the image.
# Unpinned on purpose (DL3008): Debian drops superseded versions from bookworm,
# so a pin would break the build at the next point release.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends cmake \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /src
# Everything the build reads: the sources, and config/ too, which `scopegate
# demo` embeds with include_str!. .dockerignore keeps target/ and .git out.
COPY . .

# The registry and target/ are cache mounts, so a rebuild after a source change
# recompiles only scopegate itself. The binary is copied out of the cache in the
# same step, since cache mounts are not part of the image.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin scopegate \
    && install -D -m 0755 target/release/scopegate /out/scopegate

# ---------------------------------------------------------------------------
# Runtime: glibc (the binary links it dynamically) and the CA bundle for https
# upstreams and rediss:// Redis. bookworm-slim rather than distroless so that
# the Kubernetes preStop hook has `sleep` (deploy/kubernetes/deployment.yaml).
FROM debian:bookworm-slim AS runtime

# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 scopegate \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin scopegate \
    && mkdir -p /etc/scopegate

COPY --from=build /out/scopegate /usr/local/bin/scopegate

LABEL org.opencontainers.image.title="scopegate" \
      org.opencontainers.image.description="Reverse proxy that enforces API-key scopes, limits and budgets in front of LLM completions and admin services" \
      org.opencontainers.image.licenses="Apache-2.0"

# Numeric, so that Kubernetes' runAsNonRoot can verify it without /etc/passwd.
USER 10001:10001
WORKDIR /tmp

# 8080: the proxy (`listen`); 9464: /metrics, /healthz, /readyz (`metrics_listen`).
EXPOSE 8080 9464

# SIGTERM (Docker's and Kubernetes' stop signal) drains in-flight requests for
# shutdown_grace_period_seconds, then exits 0: give `docker stop -t` / the pod's
# terminationGracePeriodSeconds more than that.
STOPSIGNAL SIGTERM
ENTRYPOINT ["scopegate"]
CMD ["serve", "--config", "/etc/scopegate/scopegate.yaml"]
