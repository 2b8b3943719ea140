# The image the GPU work pools run (deployments/k8s, deployments/docker; docs/cluster.md):
#   docker build -t REGISTRY/finetuning-llm:TAG . && docker push REGISTRY/finetuning-llm:TAG
# CUDA runtime base, Python 3.12, the project installed from requirements.lock by the same script
# CI runs (scripts/setup.sh; on PyPI's Linux index the lock's torch==2.13.0 is the CUDA build),
# run as a non-root user. Flow runs start in /app (prefect.yaml's GPU deployments pull step).
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PYTHON=python3.12 \
    FTLLM_DATA_DIR=/data \
    HF_HOME=/data/huggingface \
    PATH=/app/.venv/bin:$PATH

RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.12 python3.12-venv git ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 1000 ftllm \
    && mkdir -p /app /data \
    && chown ftllm:ftllm /app /data

USER ftllm
WORKDIR /app
COPY --chown=ftllm:ftllm pyproject.toml requirements.lock README.md prefect.yaml ./
COPY --chown=ftllm:ftllm scripts/ scripts/
COPY --chown=ftllm:ftllm tasks/ tasks/
COPY --chown=ftllm:ftllm flows/ flows/
COPY --chown=ftllm:ftllm configs/ configs/
# The lock, then the project (tests/packaging/test_install.py resolves these same commands for 3.12).
RUN bash scripts/setup.sh
# The `gpu` extra's Liger kernels (a wheel). flash-attn compiles against the image's torch for
# 20+ minutes: build it in a derived image when wanted (pip install --no-build-isolation flash-attn==2.8.3.post2).
RUN .venv/bin/python -m pip install -q --disable-pip-version-check liger-kernel==0.8.5

VOLUME ["/data"]
CMD ["ftllm", "--list"]
