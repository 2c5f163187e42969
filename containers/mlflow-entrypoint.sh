#!/bin/sh
# Start `mlflow server` on PostgreSQL. The backend-store URI is built here from MLFLOW_DB_* and the
# password in MLFLOW_DB_PASSWORD_FILE (a Docker or Kubernetes secret), URL-encoded, and handed to
# mlflow through its environment variable: no password in the image, the compose file or argv.
# Every other option is an MLFLOW_* variable that `mlflow server` reads itself.
set -eu

: "${MLFLOW_DB_HOST:?set MLFLOW_DB_HOST, the PostgreSQL host}"
: "${MLFLOW_DB_USER:?set MLFLOW_DB_USER}"
: "${MLFLOW_DB_NAME:?set MLFLOW_DB_NAME}"
: "${MLFLOW_DB_PASSWORD_FILE:?set MLFLOW_DB_PASSWORD_FILE to a file holding the database password (a secret)}"
MLFLOW_DB_PORT="${MLFLOW_DB_PORT:-5432}"

if [ ! -r "$MLFLOW_DB_PASSWORD_FILE" ]; then
    echo "mlflow-entrypoint: cannot read the password file $MLFLOW_DB_PASSWORD_FILE" >&2
    exit 1
fi
password=$(python -c 'import sys, urllib.parse; print(urllib.parse.quote(open(sys.argv[1]).read().strip(), safe=""))' "$MLFLOW_DB_PASSWORD_FILE")
if [ -z "$password" ]; then
    echo "mlflow-entrypoint: the password file $MLFLOW_DB_PASSWORD_FILE is empty" >&2
    exit 1
fi
user=$(python -c 'import sys, urllib.parse; print(urllib.parse.quote(sys.argv[1], safe=""))' "$MLFLOW_DB_USER")
# psycopg2 named: SQLAlchemy 2.1 reads a plain postgresql:// as psycopg 3, which the image does not hold.
MLFLOW_BACKEND_STORE_URI="postgresql+psycopg2://${user}:${password}@${MLFLOW_DB_HOST}:${MLFLOW_DB_PORT}/${MLFLOW_DB_NAME}"
export MLFLOW_BACKEND_STORE_URI
unset password

echo "mlflow-entrypoint: PostgreSQL ${MLFLOW_DB_USER}@${MLFLOW_DB_HOST}:${MLFLOW_DB_PORT}/${MLFLOW_DB_NAME}, artifacts ${MLFLOW_ARTIFACTS_DESTINATION:-(mlflow default)}"
exec mlflow server "$@"
