# syntax=docker/dockerfile:1
# The ModelRollout operator image.
#
# Build (from the repository root; the tag should be modelrollout.__version__):
#   docker build -t ghcr.io/modelrollout/modelrollout-operator:0.1.0 .
# Smoke test:
#   docker run --rm ghcr.io/modelrollout/modelrollout-operator:0.1.0 --help
#
# Stage 1 builds the operator's wheel and installs it with its dependencies into a virtualenv;
# stage 2 copies only that virtualenv onto a clean python:3.11-slim: no compiler, no pip, no
# sources, non-root (uid 65532), nothing written at run time (bytecode is compiled here), so the
# container runs with a read-only root filesystem.

FROM python:3.11-slim AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator ./operator
RUN python -m pip wheel --no-deps --wheel-dir /dist . \
 && python -m venv /opt/venv \
 && /opt/venv/bin/pip install /dist/*.whl \
 && /opt/venv/bin/pip uninstall -y pip \
 && python -m compileall -q /opt/venv/lib

FROM python:3.11-slim
ARG VERSION=dev
LABEL org.opencontainers.image.title="modelrollout-operator" \
      org.opencontainers.image.description="Kubernetes operator for safe, audited ML model rollouts" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp
COPY --from=builder /opt/venv /opt/venv
USER 65532:65532
EXPOSE 8081
ENTRYPOINT ["modelrollout", "run"]
