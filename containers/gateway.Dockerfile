# syntax=docker/dockerfile:1
# The gateway image: the canary gateway (the default command), the rollout controller
# (`python -m serving.rollout`) and the registry CLI (`python -m registry ...`). One image, so the
# gateway and the controller always run the same registry code.
# Build from the repository root: docker build -f containers/gateway.Dockerfile .
FROM python:3.11-slim-bookworm

SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app

COPY requirements.lock containers/requirements/gateway.txt /tmp/requirements/
RUN pip install --no-cache-dir -r /tmp/requirements/gateway.txt -c /tmp/requirements/requirements.lock \
    && rm -rf /tmp/requirements

# A fixed, non-root uid: Kubernetes' runAsUser and the volumes' ownership refer to it. /models is
# the controller's shared model repository (named volumes take this ownership when first mounted).
RUN useradd --uid 10001 --user-group --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin app \
    && mkdir -p /models \
    && chown 10001:10001 /models

COPY containers/healthcheck.py /usr/local/bin/healthcheck.py
COPY params.yaml ./
COPY core/ core/
COPY registry/ registry/
COPY serving/ serving/

# No settings here beyond paths: addresses, the admin token and the tracking URI come from the
# environment the stack sets (containers/compose.yaml, deploy/), never from the image.
ENV PYTHONPATH=/app \
    HOME=/tmp \
    HF_HUB_OFFLINE=1
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "/usr/local/bin/healthcheck.py", "http://127.0.0.1:8000/healthz"]
CMD ["python", "-m", "serving.gateway"]
