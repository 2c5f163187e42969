"""``python -m serving.gateway``: one uvicorn worker (uvloop, httptools) serving the gateway.

Settings come from the environment: ``GATEWAY_*`` (``serving.gateway.settings``), the registry's
``REGISTRY_*`` and ``MLFLOW_TRACKING_URI``, Triton's address from ``TRITON_*``. Bad settings exit
with status 2 and say which variable to fix.
"""

from __future__ import annotations

import logging
import os
import sys

from pydantic import ValidationError


def main() -> int:
    import uvicorn

    from registry.settings import RegistrySettings
    from serving.gateway.app import create_app
    from serving.gateway.settings import GatewaySettings

    # A poll must fail in seconds when MLflow is down, not after MLflow's default of seven retries
    # (minutes): the gateway keeps serving the last known split meanwhile. The environment still wins.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    try:
        settings = GatewaySettings()
        registry_settings = RegistrySettings()
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}" for e in exc.errors())
        print(f"gateway: bad settings: {problems}", file=sys.stderr)
        return 2
    level = settings.log_level.upper()
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = create_app(settings, registry_settings)
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http="httptools",
        workers=1,
        log_level=settings.log_level.lower(),
        access_log=False,
        timeout_graceful_shutdown=10,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
