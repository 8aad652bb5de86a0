# syntax=docker/dockerfile:1
#
# livestream-bridge container image.
#
#   docker build -t livestream-bridge:dev .
#   docker run --rm livestream-bridge:dev check-config      # any subcommand; default: run
#
# Two stages: "builder" creates a virtualenv and installs everything into it; the final
# stage copies only that virtualenv onto a clean slim base. Every dependency ships as a
# binary wheel for linux/amd64 and linux/arm64; only the bridge's own four C modules
# (bridge/_window.c, _fields.c, _frame.c, _lane.c) are compiled, by gcc in the builder, so no
# compiler can leak into the final image. Every Python package is the one uv.lock names, checked
# against its SHA-256; scripts/sbom lists them (CycloneDX).
#
# Renovate (renovate.json) proposes base image updates and pins its digest.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- builder -----------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore

WORKDIR /src

# gcc for the bridge's C modules (bridge/_*.c); the headers come with the base image's Python.
# hadolint ignore=DL3008 # the compiler of the pinned base image's Debian release, builder only
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*

# Dependencies first, in their own layer: rebuilt only when the lock (or pyproject.toml, which
# it must match) changes, not on every source edit. Everything comes from uv.lock, verified
# by SHA-256: uv itself (into the builder's own Python, never into the image's venv), then
# the runtime set and the build backend, which pip installs with --require-hashes. A lock
# that is out of date with pyproject.toml fails the build (scripts/lock --check).
COPY pyproject.toml uv.lock ./
COPY scripts/lock ./scripts/
RUN python scripts/lock --uv-pin > /tmp/uv-requirements.txt \
    && python -m pip install --require-hashes -r /tmp/uv-requirements.txt \
    && python scripts/lock --check \
    && python scripts/lock --export runtime -o /tmp/requirements.txt \
    && python -m venv /opt/venv \
    && /opt/venv/bin/pip install --require-hashes -r /tmp/requirements.txt

ENV PATH=/opt/venv/bin:$PATH

# Then the package itself, without touching the dependencies installed above; the locked
# setuptools is the build backend, so nothing more is fetched. pyproject names README.md;
# "README.m[d]" is a pattern so the build also works while there is none, and
# pyproject.toml (unchanged, so no cache miss) keeps the COPY from having zero sources.
# Byte code with unchecked hashes: no build time inside, and the venv never changes.
# livestream_sim/ is the Live Stream simulator (`livestream-bridge simulate`, the compose
# demo's upstream): a package of its own, which `run` never imports.
COPY pyproject.toml README.m[d] ./
COPY bridge/ ./bridge/
COPY livestream_sim/ ./livestream_sim/
RUN pip install --no-deps --no-build-isolation . \
    && python -m compileall -q -f --invalidation-mode unchecked-hash /opt/venv \
    && livestream-bridge --version \
    && livestream-sim --help > /dev/null

# --- runtime -----------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime

# OCI labels (what the image is, where from, which commit). Set in CI:
#   --build-arg VERSION=$(git describe --tags) --build-arg REVISION=$(git rev-parse HEAD)
#   --build-arg SOURCE_URL=<repository URL>
# The license is the project's (pyproject.toml), not a build-time fact, so it is no argument.
# No "created" label: a timestamp would make every rebuild of one commit a different image.
ARG PYTHON_IMAGE
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG SOURCE_URL=https://example.invalid/livestream-bridge
LABEL org.opencontainers.image.title="livestream-bridge" \
      org.opencontainers.image.description="Adobe Analytics Live Stream to Kafka, exactly once, as a hot-standby pair" \
      org.opencontainers.image.source="${SOURCE_URL}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.base.name="${PYTHON_IMAGE}"

COPY --from=builder /opt/venv /opt/venv

# PYTHONUNBUFFERED: log lines leave at once (kubectl logs, docker logs).
# PYTHONDONTWRITEBYTECODE: the root file system is read-only in Kubernetes; the venv was
# byte-compiled in the builder. HOME: a writable place for a user without a passwd entry.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp

WORKDIR /tmp

# Numeric so that Kubernetes' runAsNonRoot can verify it without a passwd lookup.
USER 10001:10001

# /healthz, /readyz, /status and /metrics.
EXPOSE 8080

HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["livestream-bridge", "health"]

# Exec form: the bridge is PID 1 and receives SIGTERM itself (graceful shutdown: publish
# what was read, commit, release leadership).
ENTRYPOINT ["livestream-bridge"]
CMD ["run"]
