# syntax=docker/dockerfile:1
# pagefault-inspector: the service that runs in every node's pod (charts/pagefault-inspector).
# Multi-arch: nothing here is architecture-specific, so one build serves both.
#   docker buildx build --platform linux/amd64,linux/arm64 -t <registry>/pagefault-inspector:0.1.0 --push .

# Python 3.12 on Debian bookworm, pinned by the digest of the multi-platform index so both
# architectures resolve to a known image. Re-pin deliberately:
#   docker buildx imagetools inspect python:3.12-slim-bookworm   (the top-level "Digest")
ARG PYTHON_IMAGE=python:3.12-slim-bookworm@sha256:a116514e19457bcb7af7efe9c3dd0b9b71e85b317694e7882a1c52aa15a78134

# --- build: the app's wheel and its dependencies' wheels --------------------------------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
# Only what the wheel is built from (.dockerignore keeps the rest out of the context).
COPY pyproject.toml README.md ./
COPY app ./app
RUN pip wheel --wheel-dir /wheels .

# --- runtime ------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

# The tracers, from Debian: perf (linux-perf; the major-faults software event works on every
# kernel from this perf on, amd64 and arm64) and bpftrace (0.17). procps for ps/pgrep in a
# debugging shell. Versions are not pinned: bookworm is a stable release whose archive drops
# superseded versions on security updates, so a pin would break the build.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends linux-perf bpftrace procps \
    && rm -rf /var/lib/apt/lists/* \
    && perf --version \
    && bpftrace --version

# The app from the wheel built above, offline (only the wheels of the build stage); the
# version is the one of this tree, so nothing to pin.
# hadolint ignore=DL3013
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-index --find-links=/wheels pagefault-inspector \
    && pagefault-inspector --help >/dev/null

# Runs as root, on purpose: the investigation opens perf events and loads BPF programs for
# other processes, and reads /proc/PID/maps, smaps and io of every process on the node, which
# a non-root user cannot do even with capabilities on several of them (bpftrace insists on
# root). The chart confines it instead: read-only root filesystem, read-only host mounts,
# a capability set or `privileged` as the node's SELinux requires.
# hadolint ignore=DL3002
USER 0:0
WORKDIR /tmp
EXPOSE 8080
# No HEALTHCHECK: Kubernetes probes /healthz and /readyz (the chart sets them).
ENTRYPOINT ["pagefault-inspector"]
CMD ["serve"]
