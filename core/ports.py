"""Where each service of the stack listens by default: the one place these numbers are written.

Every settings class takes its default from here (``TRITON_*``, ``GATEWAY_*``, ``EDGE_*``,
``CONTROLLER_*``, ``REGISTRY_*``), and ``make up`` reads those settings, so one variable moves one
port everywhere that uses it. Everything binds to loopback unless a setting says otherwise; the
edge's public port is the one entry meant for clients.
"""

from __future__ import annotations

from dataclasses import dataclass

#: The address every service binds to and reaches the others at, unless its settings say otherwise.
LOOPBACK = "127.0.0.1"


@dataclass(frozen=True)
class Ports:
    """The stack's ports: nginx's public and internal listeners, the gateway replicas, Triton, MLflow."""

    edge: int = 8080
    # The edge's second listener, loopback only: the status page, /metrics, /readyz and the admin API.
    edge_internal: int = 8081
    gateways: tuple[int, ...] = (8000, 8010)
    triton_http: int = 8001
    triton_grpc: int = 8002
    triton_metrics: int = 8003
    mlflow: int = 5000


DEFAULT = Ports()

#: Seconds nginx keeps an idle keep-alive connection to a gateway. A gateway keeps its idle
#: connections longer (``GATEWAY_IDLE_S``), so nginx, the side that reuses them, is the side that
#: closes them: a gateway closing one just as nginx sends a request on it would reset a POST that
#: nginx must not send again (it may have reached the gateway). A draining gateway waits this long
#: for nginx to let go of connections it no longer uses.
EDGE_UPSTREAM_IDLE_S = 4
GATEWAY_IDLE_S = 3 * EDGE_UPSTREAM_IDLE_S


def url(port: int, host: str = LOOPBACK) -> str:
    """``http://host:port`` (IPv6 literals bracketed)."""
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
