"""Small builders every manifest shares: names, labels, the pod and container security context, probes.

Ports are the project's own (``serving.stack.Ports``), so a container, its Service, its probes and the
addresses other services use can never disagree.
"""

from __future__ import annotations

from typing import Any

from deploy.settings import Resources
from serving.stack import Ports

Manifest = dict[str, Any]

PART_OF = "qwen3-vl-serving"
#: The non-root uid and gid every image of containers/ runs as.
UID = 10001
PORTS = Ports()
GATEWAY_PORT = PORTS.gateways[0]
TRITON_HTTP_PORT = PORTS.triton_http
TRITON_GRPC_PORT = PORTS.triton_grpc
TRITON_METRICS_PORT = PORTS.triton_metrics
MLFLOW_PORT = PORTS.mlflow
#: Where the controller and Triton mount the model volume (the Triton image's --model-repository lives here).
MODELS_MOUNT = "/models"
#: The one ServiceAccount of the stack; no component talks to the Kubernetes API.
SERVICE_ACCOUNT = PART_OF
#: Who holds the model volume: the controller writes, Triton reads.
MODELS_CLAIM = "models"


def labels(component: str) -> dict[str, str]:
    return {"app.kubernetes.io/part-of": PART_OF, "app.kubernetes.io/component": component}


def metadata(name: str, namespace: str, component: str, **extra: Any) -> Manifest:
    return {"name": name, "namespace": namespace, "labels": labels(component), **extra}


def selector(component: str) -> Manifest:
    return {"matchLabels": labels(component)}


def pod_security() -> Manifest:
    """Restricted Pod Security: non-root, a fixed uid, volumes group-owned by it, the runtime's seccomp profile."""
    return {
        "runAsNonRoot": True,
        "runAsUser": UID,
        "runAsGroup": UID,
        "fsGroup": UID,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container_security(*, read_only_root: bool = True) -> Manifest:
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": read_only_root,
        "capabilities": {"drop": ["ALL"]},
    }


def http_probe(path: str, port: int, *, period_s: int, failures: int, timeout_s: int = 3) -> Manifest:
    return {
        "httpGet": {"path": path, "port": port},
        "periodSeconds": period_s,
        "timeoutSeconds": timeout_s,
        "failureThreshold": failures,
    }


def resources(settings: Resources, **extra_limits: int | str) -> Manifest:
    limits: dict[str, int | str] = {**settings.limits, **extra_limits}
    requests: dict[str, int | str] = {**settings.requests, **extra_limits}
    return {"requests": requests, "limits": limits}


def tmp_volume() -> tuple[Manifest, Manifest]:
    """An emptyDir on /tmp (HOME points there): the root filesystem stays read-only."""
    return {"name": "tmp", "emptyDir": {}}, {"name": "tmp", "mountPath": "/tmp"}


def service(name: str, namespace: str, component: str, ports: list[tuple[str, int]], **spec: Any) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(name, namespace, component),
        "spec": {
            "selector": labels(component),
            "ports": [{"name": port_name, "port": port, "targetPort": port} for port_name, port in ports],
            **spec,
        },
    }


def env(values: dict[str, str]) -> list[Manifest]:
    return [{"name": name, "value": value} for name, value in values.items()]
