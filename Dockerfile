# SAGE Studio image: one image for the web app, beat and both worker kinds.
#   docker build -t sage-studio .                                   # CPU base (Debian)
#   docker build --build-arg VARIANT=cuda -t sage-studio:cuda .      # CUDA base for GPU train workers
#
# Python comes from uv (a standalone CPython build under /opt/python), not from the base image's
# package manager: Ubuntu 24.04 (the CUDA base) ships 3.12 and no 3.11 package, and a virtual
# environment only works where the interpreter it was made from exists at the same path. So the
# interpreter is installed on the runtime base itself, the venv is built on top of it in the same
# stage chain, and both /opt/python and /opt/venv are copied to the runtime image together.
# torch's Linux wheels bring their own CUDA libraries; the CUDA base adds cuDNN/NCCL-compatible
# system libraries and the NVIDIA container runtime hooks. Only the host driver must be new enough.
ARG VARIANT=cpu
ARG PYTHON_VERSION=3.11
ARG UV_VERSION=0.8.14
ARG CPU_BASE=debian:bookworm-slim
ARG CUDA_BASE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04

FROM ghcr.io/astral-sh/uv:${UV_VERSION} AS uv

# ---- runtime bases ----
FROM ${CPU_BASE} AS base-cpu
FROM ${CUDA_BASE} AS base-cuda

# ---- python: the interpreter, installed by uv on the runtime base ----
FROM base-${VARIANT} AS python
ARG PYTHON_VERSION
COPY --from=uv /uv /usr/local/bin/uv
ENV UV_PYTHON_INSTALL_DIR=/opt/python UV_PYTHON_PREFERENCE=only-managed UV_LINK_MODE=copy \
    UV_COMPILE_BYTECODE=1 UV_NO_CACHE=1
RUN uv python install ${PYTHON_VERSION}

# ---- build: a virtual environment with the project and its dependencies ----
FROM python AS build
ARG PYTHON_VERSION
# Extra wheel index, e.g. https://download.pytorch.org/whl/cpu for a smaller CPU-only torch.
ARG TORCH_INDEX_URL=""
RUN uv venv --python ${PYTHON_VERSION} /opt/venv
WORKDIR /src
COPY pyproject.toml README.md ./
COPY sage ./sage
COPY app ./app
COPY worker ./worker
RUN VIRTUAL_ENV=/opt/venv uv pip install --index-strategy unsafe-best-match \
    ${TORCH_INDEX_URL:+--extra-index-url ${TORCH_INDEX_URL}} . \
    && /opt/venv/bin/python -c "import sys; assert sys.version.startswith('${PYTHON_VERSION}.'), sys.version"

# ---- runtime ----
FROM base-${VARIANT} AS runtime
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 SAGE_DATA_DIR=/data SAGE_ENV=production
RUN useradd --create-home --uid 10001 sage && mkdir -p /data && chown sage /data
COPY --from=python /opt/python /opt/python
COPY --from=build /opt/venv /opt/venv
WORKDIR /srv/sage
COPY --chown=sage alembic.ini ./
COPY --chown=sage migrations ./migrations
COPY --chown=sage templates ./templates
COPY --chown=sage static ./static
USER sage
# /data is scratch with SAGE_STORAGE_URL=s3://... (caches, a run's working copy); with the default
# local storage it also holds the objects, the SQLite database and the embedded broker.
VOLUME ["/data"]
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz')"
CMD ["sage-studio", "serve", "--host", "0.0.0.0", "--port", "8000"]
