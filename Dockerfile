# syntax=docker/dockerfile:1
#
# livestream-bridge container image.
#
#   docker build -t livestream-bridge:dev .
#   docker run --rm livestream-bridge:dev check-config      # any subcommand; default: run
#
# Two stages: "builder" creates a virtualenv and installs everything into it; the final
# stage copies only that virtualenv onto a clean slim base. Every dependency ships as a
# binary wheel for linux/amd64 and linux/arm64, so no compiler is installed in either
# stage (and none can leak into the final image).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- builder -----------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src

# Dependencies first, in their own layer: it is rebuilt only when pyproject.toml changes,
# not on every source edit. The list is read from [project].dependencies so there is one
# place to change it.
COPY pyproject.toml ./
RUN python -c "import tomllib; \
deps = tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']; \
open('/tmp/requirements.txt', 'w').write('\n'.join(deps) + '\n')" \
    && pip install --upgrade pip "setuptools>=68" wheel \
    && pip install -r /tmp/requirements.txt

# Then the package itself, without touching the dependencies installed above (setuptools
# from the step above is the build backend, so nothing more is fetched). pyproject names
# README.md; "README.m[d]" is a pattern so the build also works while there is none, and
# pyproject.toml (unchanged, so no cache miss) keeps the COPY from having zero sources.
COPY pyproject.toml README.m[d] ./
COPY bridge/ ./bridge/
RUN pip install --no-deps --no-build-isolation . \
    && python -m compileall -q /opt/venv \
    && livestream-bridge --version

# --- runtime -----------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime

# Set both in CI: --build-arg VERSION=$(git describe) --build-arg SOURCE_URL=<repository URL>
ARG VERSION=0.1.0
ARG SOURCE_URL=https://example.invalid/livestream-bridge
LABEL org.opencontainers.image.title="livestream-bridge" \
      org.opencontainers.image.description="Adobe Analytics Live Stream to Kafka, exactly once, as a hot-standby pair" \
      org.opencontainers.image.source="${SOURCE_URL}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}"

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
