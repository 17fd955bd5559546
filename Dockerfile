# SAGE Studio image: one image for the web app, beat and both worker kinds.
#   docker build -t sage-studio .                                   # CPU base
#   docker build --build-arg VARIANT=cuda -t sage-studio:cuda .      # CUDA base for GPU train workers
ARG VARIANT=cpu
ARG CPU_BASE=python:3.11-slim-bookworm
ARG CUDA_BASE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04

# ---- build: a virtual environment with the project and its dependencies ----
FROM python:3.11-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md ./
COPY sage ./sage
COPY app ./app
COPY worker ./worker
RUN pip install --upgrade pip && pip install .

# ---- runtime bases ----
FROM ${CPU_BASE} AS base-cpu
FROM ${CUDA_BASE} AS base-cuda
RUN apt-get update && apt-get install -y --no-install-recommends python3.11 python3.11-venv \
    && rm -rf /var/lib/apt/lists/* && ln -sf /usr/bin/python3.11 /usr/local/bin/python3.11

# ---- runtime ----
FROM base-${VARIANT} AS runtime
ARG BASE_IMAGE
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 SAGE_DATA_DIR=/data SAGE_ENV=production
RUN useradd --create-home --uid 10001 sage && mkdir -p /data && chown sage /data
COPY --from=build /opt/venv /opt/venv
WORKDIR /srv/sage
COPY --chown=sage alembic.ini ./
COPY --chown=sage migrations ./migrations
COPY --chown=sage templates ./templates
COPY --chown=sage static ./static
USER sage
VOLUME ["/data"]
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz')"
CMD ["sage-studio", "serve", "--host", "0.0.0.0", "--port", "8000"]
