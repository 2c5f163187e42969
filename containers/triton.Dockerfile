# syntax=docker/dockerfile:1
# Triton 2.51 (NVIDIA's 24.10 container) with the Python backend's dependencies pinned from
# requirements.lock, for the model folders the package stage writes (serving/backend/model.py).
#
# The container's Python is 3.10, but the pinned stack needs 3.11 (transformers 5 and pillow 13 require
# it), so the backend runs in a Python 3.11 virtual environment with a stub built for 3.11 against
# Triton 2.51: the one the pinned nvidia-pytriton wheel ships, the same stub `make triton` runs locally.
# Build from the repository root: docker build -f containers/triton.Dockerfile .
# Torch from another index (a CUDA build that matches the host driver):
#   --build-arg PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cu126
FROM nvcr.io/nvidia/tritonserver:24.10-py3

SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ARG DEBIAN_FRONTEND=noninteractive
# Ubuntu 22.04's own python3.11 (jammy-updates); the tag above pins the distribution, and apt keeps
# its security fixes, so the packages are not pinned to a revision that the archive later drops.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.11 python3.11-venv libpython3.11 \
    && rm -rf /var/lib/apt/lists/*

ARG PIP_EXTRA_INDEX_URL
COPY requirements.lock containers/requirements/triton.txt containers/requirements/triton-stub.txt /tmp/requirements/
RUN python3.11 -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir -r /tmp/requirements/triton.txt -c /tmp/requirements/requirements.lock \
    && /opt/venv/bin/pip install --no-cache-dir --no-deps -r /tmp/requirements/triton-stub.txt \
    && rm -rf /tmp/requirements

# The 3.11 stub replaces the container's 3.10 one. Its libraries (a renamed libcudart) sit in the
# wheel's nvidia_pytriton.libs; the venv leads PATH, so the stub's interpreter finds the venv's packages.
ENV LD_LIBRARY_PATH=/opt/venv/lib/python3.11/site-packages/nvidia_pytriton.libs:${LD_LIBRARY_PATH} \
    PATH=/opt/venv/bin:${PATH}
RUN cp /opt/venv/lib/python3.11/site-packages/pytriton/tritonserver/python_backend_stubs/3.11/triton_python_backend_stub \
        /opt/tritonserver/backends/python/triton_python_backend_stub \
    && if ldd /opt/tritonserver/backends/python/triton_python_backend_stub | grep "not found"; then exit 1; fi \
    && python -c "import torch, transformers, bitsandbytes, PIL, numpy; assert numpy.__version__.startswith('1.')"

# A fixed, non-root uid shared with the gateway image: both mount the model repository at /models.
RUN useradd --uid 10001 --user-group --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin triton-app \
    && mkdir -p /models/repository \
    && chown -R 10001:10001 /models

COPY containers/healthcheck.py /usr/local/bin/healthcheck.py
ENV HOME=/tmp \
    HF_HOME=/tmp/huggingface \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_NO_ADVISORY_WARNINGS=1
USER 10001:10001
# HTTP, gRPC, metrics: the ports the project's own launcher uses (serving/triton/settings.py).
EXPOSE 8001 8002 8003
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "/usr/local/bin/healthcheck.py", "http://127.0.0.1:8001/v2/health/ready"]
# Explicit model control: the rollout controller loads and unloads exactly the champion and the canary.
CMD ["tritonserver", "--model-repository=/models/repository", "--model-control-mode=explicit", \
     "--disable-auto-complete-config", "--http-port=8001", "--grpc-port=8002", "--metrics-port=8003", \
     "--exit-timeout-secs=10", "--log-verbose=0"]
