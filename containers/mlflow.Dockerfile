# syntax=docker/dockerfile:1
# The MLflow tracking server on PostgreSQL, serving artifacts itself (--serve-artifacts), so clients
# (the register stage, the controller) need no storage credentials. Options come from MLFLOW_* environment
# variables (MLFLOW_HOST, MLFLOW_PORT, MLFLOW_ARTIFACTS_DESTINATION, ...); the entrypoint builds the
# database URI from MLFLOW_DB_* and a password file, so no password sits in the image or in argv.
# Build from the repository root: docker build -f containers/mlflow.Dockerfile .
FROM python:3.11-slim-bookworm

SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
COPY requirements.lock containers/requirements/mlflow.txt /tmp/requirements/
RUN pip install --no-cache-dir -r /tmp/requirements/mlflow.txt -c /tmp/requirements/requirements.lock \
    && rm -rf /tmp/requirements

RUN useradd --uid 10001 --user-group --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin mlflow \
    && mkdir -p /mlflow/artifacts \
    && chown -R 10001:10001 /mlflow

COPY containers/healthcheck.py /usr/local/bin/healthcheck.py
COPY containers/mlflow-entrypoint.sh /usr/local/bin/mlflow-entrypoint
# One worker and no job execution: about 2 GB less memory (docs/DESIGN.md, measured).
ENV HOME=/tmp \
    MLFLOW_HOST=0.0.0.0 \
    MLFLOW_PORT=5000 \
    MLFLOW_WORKERS=1 \
    MLFLOW_SERVE_ARTIFACTS=true \
    MLFLOW_ARTIFACTS_DESTINATION=/mlflow/artifacts \
    MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false
WORKDIR /mlflow
USER 10001:10001
EXPOSE 5000
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=5 \
    CMD ["python", "/usr/local/bin/healthcheck.py", "http://127.0.0.1:5000/health"]
ENTRYPOINT ["/usr/local/bin/mlflow-entrypoint"]
