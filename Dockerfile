# syntax=docker/dockerfile:1
# The nri-memory-manager plugin image. From the repository root:
#   docker build -t nri-memory-manager:0.1.0 .
# Host paths and privileges it needs, and why: docs/deploy.md.

ARG PYTHON_IMAGE=python:3.12-slim-bookworm

# -- build: our wheel, then a virtualenv with it and its dependencies ---------
FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY nri_plugin/ nri_plugin/
# The venv gets no pip of its own: the build stage's pip installs into it.
# Binary wheels only, so that no compiler is ever needed (or shipped).
RUN python -m pip wheel --no-cache-dir --no-deps --wheel-dir /wheels . \
 && python -m venv --without-pip /opt/nri-memory-manager \
 && python -m pip --python /opt/nri-memory-manager/bin/python install \
      --no-cache-dir --only-binary=:all: /wheels/*.whl

# -- run: the base interpreter and that virtualenv, nothing else -------------
FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="nri-memory-manager" \
      org.opencontainers.image.description="Kubernetes Memory Manager static policy as a containerd NRI plugin" \
      org.opencontainers.image.licenses="Apache-2.0"
# Nothing can be installed into the running image: pip and ensurepip go.
RUN python -m pip uninstall --yes pip setuptools wheel \
 && rm -rf /usr/local/lib/python3*/ensurepip /root/.cache
COPY --from=build /opt/nri-memory-manager /opt/nri-memory-manager
# The root filesystem is read-only in the DaemonSet: no bytecode writes (the
# venv's .pyc files were compiled at install time), output unbuffered.
ENV PATH="/opt/nri-memory-manager/bin:${PATH}" \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# Root, with every capability dropped by the DaemonSet: containerd's NRI
# socket directory is root-owned with mode 0700.
# hadolint ignore=DL3002
USER 0:0
ENTRYPOINT ["/opt/nri-memory-manager/bin/nri-memory-manager", "run"]
