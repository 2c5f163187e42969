# syntax=docker/dockerfile:1
# The nginx edge for the compose stack: Debian's nginx, its config rendered from EDGE_* settings by
# serving/edge (the same renderer and `nginx -t` check as `make up`), run as a non-root user.
# Build from the repository root: docker build -f containers/edge.Dockerfile .
FROM python:3.11-slim-bookworm

SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ARG DEBIAN_FRONTEND=noninteractive
# Debian bookworm's nginx; the base tag pins the distribution and apt keeps its security fixes.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends nginx \
    && rm -rf /var/lib/apt/lists/*

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app
COPY requirements.lock containers/requirements/edge.txt /tmp/requirements/
RUN pip install --no-cache-dir -r /tmp/requirements/edge.txt -c /tmp/requirements/requirements.lock \
    && rm -rf /tmp/requirements

# nginx opens its default error log before it reads the rendered config: let the edge user write it.
RUN useradd --uid 10001 --user-group --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin edge \
    && chown -R 10001:10001 /var/log/nginx /var/lib/nginx

COPY containers/healthcheck.py /usr/local/bin/healthcheck.py
# Whole packages (only serving.edge's imports run: tests/deploy checks they need nothing but edge.txt).
COPY core/ core/
COPY serving/ serving/
ENV PYTHONPATH=/app \
    HOME=/tmp
USER 10001:10001
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "/usr/local/bin/healthcheck.py", "tcp://127.0.0.1:8080"]
CMD ["python", "-m", "serving.edge", "--run-dir", "/tmp/nginx"]
