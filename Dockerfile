# syntax=docker/dockerfile:1
# Dhaka Explorer for a lab: one container, one Streamlit server, runs kept on a volume.
#
#   docker build -t dhaka-explorer .
#   docker run -d -p 8501:8501 -v dhaka-runs:/data/dhaka-runs --memory 8g dhaka-explorer
#
# GPU image (needs the NVIDIA Container Toolkit on the host, run with --gpus all):
#   docker build --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 -t dhaka-explorer:gpu .
# See docs/deploy.md.
FROM python:3.11-slim

# Which torch build to install: the CPU wheel by default (small image); a CUDA
# index for the GPU variant. The version must match requirements.txt.
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ARG TORCH_VERSION=2.13.0

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DHAKA_HOME=/data/dhaka-runs \
    NUMBA_CACHE_DIR=/tmp/numba-cache \
    MPLCONFIGDIR=/tmp/matplotlib \
    STREAMLIT_SERVER_FILE_WATCHER_TYPE=none \
    STREAMLIT_CLIENT_SHOW_ERROR_DETAILS=type

WORKDIR /app

# torch first, from its own index, so pip never pulls the multi-GB CUDA build by accident;
# then the pinned requirements (torch==2.13.0 is already satisfied by the +cpu wheel).
RUN pip install --no-cache-dir --index-url "${TORCH_INDEX}" "torch==${TORCH_VERSION}"
COPY requirements.txt /app/requirements.txt
RUN pip install --no-cache-dir -r /app/requirements.txt

# An unprivileged user owns the workspace volume; the code stays root-owned and read-only.
RUN groupadd --system --gid 10001 dhaka \
    && useradd --system --uid 10001 --gid dhaka --create-home --home-dir /home/dhaka dhaka \
    && mkdir -p /data/dhaka-runs \
    && chown dhaka:dhaka /data/dhaka-runs

COPY . /app

USER 10001:10001
VOLUME ["/data/dhaka-runs"]
EXPOSE 8501

HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8501/_stcore/health', timeout=4).status == 200 else 1)"]

CMD ["streamlit", "run", "app.py", "--server.address=0.0.0.0", "--server.port=8501"]
