"""``python -m serving.gateway``: one uvicorn worker (uvloop, httptools) serving the gateway.

Settings come from the environment: ``GATEWAY_*`` (``serving.gateway.settings``), the registry's
``REGISTRY_*`` and ``MLFLOW_TRACKING_URI``, Triton's address from ``TRITON_*``. Bad settings exit
with status 2 and say which variable to fix.

SIGTERM (or Ctrl-C) drains (``serving.gateway.drain``): ``/readyz`` turns 503, new connections are
refused, requests in flight finish, then the process exits 0. A second signal stops at once.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from types import FrameType
from typing import TYPE_CHECKING

from pydantic import ValidationError

from core.ports import GATEWAY_IDLE_S
from serving.gateway.drain import DRAIN_IDLE_S, Drain, drain_limit_s

if TYPE_CHECKING:
    import uvicorn

log = logging.getLogger("serving.gateway")


def make_server(config: uvicorn.Config, drain: Drain, limit_s: float) -> uvicorn.Server:
    """A uvicorn server whose first SIGTERM or SIGINT drains instead of stopping at once."""
    import uvicorn

    class DrainingServer(uvicorn.Server):
        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            if drain.draining:
                super().handle_exit(sig, frame)  # a second signal: uvicorn's own shutdown, now
                return
            drain.begin()
            self._listening = True

        async def on_tick(self, counter: int) -> bool:
            if drain.draining and not self.should_exit:
                if getattr(self, "_listening", False):
                    self._listening = False
                    for server in self.servers:
                        server.close()  # new connections are refused: nginx sends them elsewhere
                    log.info(
                        "draining: %d requests in flight, %d connections open (at most %.0f s)",
                        drain.in_flight,
                        len(self.server_state.connections),
                        limit_s,
                    )
                if drain.finished(len(self.server_state.connections), DRAIN_IDLE_S):
                    log.info("drained in %.1f s; stopping", drain.elapsed_s())
                    self.should_exit = True
                elif drain.elapsed_s() > limit_s:
                    log.warning(
                        "drain limit of %.0f s reached with %d requests in flight; stopping", limit_s, drain.in_flight
                    )
                    self.should_exit = True
            return await super().on_tick(counter)

    return DrainingServer(config)


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
    drain = Drain(clock=time.monotonic)
    app = create_app(settings, registry_settings, drain=drain)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http="httptools",
        workers=1,
        log_level=settings.log_level.lower(),
        access_log=False,
        # Longer than nginx keeps an idle connection to us, so nginx is the one that closes it.
        timeout_keep_alive=GATEWAY_IDLE_S,
        # After a drain nothing is in flight; this bounds the rest (a second signal, the drain's limit).
        timeout_graceful_shutdown=int(settings.upstream_timeout_s),
    )
    make_server(config, drain, drain_limit_s(settings.upstream_timeout_s)).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
