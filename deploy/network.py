"""The one way in (an ingress-nginx Ingress with the edge's limits) and who may talk to whom inside.

The Ingress takes its limits from the edge's own defaults (``serving.edge.settings.EdgeSettings``), so
the compose stack's nginx and the cluster's ingress refuse the same bodies and rates.
"""

from __future__ import annotations

import os
from typing import Any

from deploy.objects import GATEWAY_PORT, MLFLOW_PORT, Manifest, labels, metadata
from deploy.settings import DeploySettings
from serving.edge.config import PUBLIC_PATHS, PUBLIC_PREFIXES
from serving.edge.settings import EdgeSettings
from serving.gateway.settings import MIN_TOKEN_LENGTH


class SecretsError(Exception):
    """A secret asked for is missing from the environment or too weak."""


def _edge_default(field: str) -> Any:
    # The code's defaults, never the EDGE_* environment of the machine that renders.
    return EdgeSettings.model_fields[field].default


def ingress_annotations() -> dict[str, str]:
    """ingress-nginx annotations equal to the edge's limits (body size, per-client rate and burst, timeouts)."""
    rate, burst = int(_edge_default("rate_per_s")), int(_edge_default("burst"))
    return {
        "nginx.ingress.kubernetes.io/proxy-body-size": str(_edge_default("client_max_body_size")),
        "nginx.ingress.kubernetes.io/limit-rps": str(rate),
        # ingress-nginx allows a burst of rps x multiplier (nodelay), as the edge's limit_req burst does.
        "nginx.ingress.kubernetes.io/limit-burst-multiplier": str(max(1, burst // rate)),
        "nginx.ingress.kubernetes.io/proxy-connect-timeout": str(_edge_default("connect_timeout_s")),
        "nginx.ingress.kubernetes.io/proxy-read-timeout": str(_edge_default("read_timeout_s")),
        "nginx.ingress.kubernetes.io/proxy-send-timeout": str(_edge_default("read_timeout_s")),
        # Another replica only when this one could not be connected to (or a GET timed out), as the edge:
        # never a POST that was sent (no `non_idempotent`): an admin step would step twice, and a slow
        # generation would run twice on an already slow Triton.
        "nginx.ingress.kubernetes.io/proxy-next-upstream": "error timeout",
        "nginx.ingress.kubernetes.io/proxy-next-upstream-tries": "2",
        "nginx.ingress.kubernetes.io/proxy-buffering": "on",
    }


def ingress(s: DeploySettings) -> Manifest:
    """The public way in: exactly the edge's public paths (the OpenAI API and ``/healthz``), each ``Exact``,
    and its public prefixes (``/v1/models/``, which the gateway routes only to its model lookup), ``Prefix``.

    The admin API, ``/metrics``, the status page and ``/readyz`` stay inside the cluster (the
    controller reaches the gateways' ``/metrics`` through the headless Service; operators use
    ``kubectl port-forward``): ingress-nginx answers 404 for every other path.
    """
    backend = {"service": {"name": "gateway", "port": {"number": GATEWAY_PORT}}}
    spec: Manifest = {
        "ingressClassName": s.ingress.class_name,
        "rules": [
            {
                "host": s.ingress.host,
                "http": {
                    "paths": [{"path": path, "pathType": "Exact", "backend": backend} for path in PUBLIC_PATHS]
                    + [{"path": path, "pathType": "Prefix", "backend": backend} for path in PUBLIC_PREFIXES]
                },
            }
        ],
    }
    if s.ingress.tls_secret is not None:
        spec["tls"] = [{"hosts": [s.ingress.host], "secretName": s.ingress.tls_secret}]
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": metadata("edge", s.namespace, "edge", annotations=ingress_annotations()),
        "spec": spec,
    }


def _from_components(*components: str) -> list[Manifest]:
    return [{"podSelector": {"matchLabels": labels(component)}} for component in components]


def _rule(peers: list[Manifest], ports: list[int]) -> Manifest:
    return {"from": peers, "ports": [{"protocol": "TCP", "port": port} for port in ports]}


def _policy(s: DeploySettings, name: str, pods: dict[str, str], rules: list[Manifest]) -> Manifest:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": metadata(f"allow-{name}", s.namespace, "network"),
        "spec": {"podSelector": {"matchLabels": pods}, "policyTypes": ["Ingress"], "ingress": rules},
    }


def network_policies(s: DeploySettings, *, triton_pods: dict[str, str], triton_ports: list[int]) -> list[Manifest]:
    """Ingress rules: the ingress controller reaches the gateways; gateways and controller reach Triton
    and MLflow; the controller reaches the gateways' /metrics; nothing reaches the controller."""
    from_ingress = {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": s.ingress.controller_namespace}}
    }
    inside = _from_components("gateway", "controller")
    return [
        _policy(
            s, "gateway", labels("gateway"), [_rule([from_ingress, *_from_components("controller")], [GATEWAY_PORT])]
        ),
        _policy(s, "triton", triton_pods, [_rule(inside, triton_ports)]),
        _policy(s, "mlflow", labels("mlflow"), [_rule(inside, [MLFLOW_PORT])]),
        _policy(s, "controller", labels("controller"), []),
    ]


def secrets_from_environment(s: DeploySettings, environ: dict[str, str] | None = None) -> list[Manifest]:
    """The two Secrets, filled from GATEWAY_ADMIN_TOKEN and MLFLOW_DB_PASSWORD; SecretsError when unset or weak."""
    environ = dict(os.environ) if environ is None else environ
    token, password = environ.get("GATEWAY_ADMIN_TOKEN", ""), environ.get("MLFLOW_DB_PASSWORD", "")
    if len(token) < MIN_TOKEN_LENGTH:
        raise SecretsError(
            f"set GATEWAY_ADMIN_TOKEN to a secret of {MIN_TOKEN_LENGTH}+ characters "
            "(python -c 'import secrets; print(secrets.token_urlsafe(32))')"
        )
    if not password:
        raise SecretsError("set MLFLOW_DB_PASSWORD to the PostgreSQL password of the MLflow database user")
    return [
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": metadata(name, s.namespace, "secrets"),
            "type": "Opaque",
            "stringData": {key: value},
        }
        for name, key, value in (
            (s.secrets.admin_token, "token", token),
            (s.secrets.mlflow_db, "password", password),
        )
    ]
