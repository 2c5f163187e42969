"""The stack's workloads: MLflow, Triton, the rollout controller and the gateway replicas.

Triton runs once per Deployment: the controller loads and unloads versions through one Triton's
repository API (``CONTROLLER_TRITON_HTTP_URL``), so a second replica behind the same Service would
never be told. The controller is a single replica too; a second one would only stand by, since it
acts only while it holds the registry lease (``registry.lease``).

The gateways are a StatefulSet behind a headless Service rather than a Deployment: the controller
judges the canary from every replica's own ``/metrics`` (``CONTROLLER_GATEWAYS``, a fixed list), so
each replica needs a stable address (``gateway-<i>.gateway-headless``). The list names every replica
the autoscaler may create; the controller skips (and logs) those that do not exist at the moment.
"""

from __future__ import annotations

from deploy.objects import (
    GATEWAY_PORT,
    MLFLOW_PORT,
    MODELS_CLAIM,
    MODELS_MOUNT,
    SERVICE_ACCOUNT,
    TRITON_GRPC_PORT,
    TRITON_HTTP_PORT,
    TRITON_METRICS_PORT,
    Manifest,
    container_security,
    env,
    http_probe,
    labels,
    metadata,
    pod_security,
    resources,
    selector,
    service,
    tmp_volume,
)
from deploy.settings import DeploySettings

GATEWAY_HEADLESS = "gateway-headless"
MLFLOW_DB_MOUNT = "/run/secrets/mlflow-db"


def namespace(s: DeploySettings) -> Manifest:
    # Every pod here meets the `restricted` Pod Security Standard; the namespace enforces it.
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {
            "name": s.namespace,
            "labels": {
                "app.kubernetes.io/part-of": "qwen3-vl-serving",
                "pod-security.kubernetes.io/enforce": "restricted",
                "pod-security.kubernetes.io/enforce-version": "latest",
            },
        },
    }


def service_account(s: DeploySettings) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": metadata(SERVICE_ACCOUNT, s.namespace, "serving"),
        "automountServiceAccountToken": False,
    }


def claim(s: DeploySettings, name: str, component: str, size: str, access_mode: str) -> Manifest:
    spec: Manifest = {"accessModes": [access_mode], "resources": {"requests": {"storage": size}}}
    if s.storage.class_name is not None:
        spec["storageClassName"] = s.storage.class_name
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": metadata(name, s.namespace, component),
        "spec": spec,
    }


def model_volume(s: DeploySettings) -> Manifest:
    """The controller's Triton repository and verified version cache, read by Triton."""
    return claim(s, MODELS_CLAIM, "models", s.storage.model_repository_size, s.storage.access_mode)


def _pod(s: DeploySettings, containers: list[Manifest], volumes: list[Manifest], **extra: object) -> Manifest:
    return {
        "serviceAccountName": SERVICE_ACCOUNT,
        "automountServiceAccountToken": False,
        "securityContext": pod_security(),
        "containers": containers,
        "volumes": volumes,
        **extra,
    }


def mlflow(s: DeploySettings) -> list[Manifest]:
    """MLflow on PostgreSQL (the password from a Secret file), serving artifacts itself."""
    m = s.mlflow
    name, ns, p = "mlflow", s.namespace, MLFLOW_PORT
    hosts = [f"{h}{port}" for h in (name, f"{name}.{ns}", f"{name}.{ns}.svc", f"{name}.{ns}.svc.cluster.local")
             for port in ("", f":{p}")]  # fmt: skip
    tmp, tmp_mount = tmp_volume()
    volumes = [tmp, {"name": "db", "secret": {"secretName": s.secrets.mlflow_db, "defaultMode": 0o440}}]
    mounts = [tmp_mount, {"name": "db", "mountPath": MLFLOW_DB_MOUNT, "readOnly": True}]
    objects: list[Manifest] = []
    if m.artifacts_on_volume:
        objects.append(claim(s, "mlflow-artifacts", name, m.artifacts_size, "ReadWriteOnce"))
        volumes.append({"name": "artifacts", "persistentVolumeClaim": {"claimName": "mlflow-artifacts"}})
        mounts.append({"name": "artifacts", "mountPath": m.artifacts_destination})
    container: Manifest = {
        "name": name,
        "image": s.images.mlflow,
        "env": env(
            {
                "MLFLOW_DB_HOST": m.db_host,
                "MLFLOW_DB_PORT": str(m.db_port),
                "MLFLOW_DB_NAME": m.db_name,
                "MLFLOW_DB_USER": m.db_user,
                "MLFLOW_DB_PASSWORD_FILE": f"{MLFLOW_DB_MOUNT}/password",
                "MLFLOW_ARTIFACTS_DESTINATION": m.artifacts_destination,
                "MLFLOW_SERVER_ALLOWED_HOSTS": ",".join([*hosts, "localhost:*", "127.0.0.1:*"]),
            }
        ),
        "ports": [{"name": "http", "containerPort": p}],
        "resources": resources(m.resources),
        "securityContext": container_security(),
        "volumeMounts": mounts,
        "startupProbe": http_probe("/health", p, period_s=5, failures=60),
        "readinessProbe": http_probe("/health", p, period_s=10, failures=3),
        "livenessProbe": http_probe("/health", p, period_s=20, failures=3),
    }
    if m.storage_credentials_secret is not None:
        container["envFrom"] = [{"secretRef": {"name": m.storage_credentials_secret}}]
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata(name, ns, name),
        "spec": {
            "replicas": 1,
            # One writer of the artifacts volume at a time.
            "strategy": {"type": "Recreate"},
            "selector": selector(name),
            "template": {"metadata": {"labels": labels(name)}, "spec": _pod(s, [container], volumes)},
        },
    }
    return [*objects, deployment, service(name, ns, name, [("http", p)])]


def triton(s: DeploySettings) -> list[Manifest]:
    """Triton (the containers/triton.Dockerfile image and its command) on one node with its GPUs."""
    name, ns = "triton", s.namespace
    tmp, tmp_mount = tmp_volume()
    volumes = [
        tmp,
        {"name": "models", "persistentVolumeClaim": {"claimName": MODELS_CLAIM, "readOnly": True}},
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": s.triton.shm_size}},
    ]
    container: Manifest = {
        "name": name,
        "image": s.images.triton,
        "ports": [
            {"name": "http", "containerPort": TRITON_HTTP_PORT},
            {"name": "grpc", "containerPort": TRITON_GRPC_PORT},
            {"name": "metrics", "containerPort": TRITON_METRICS_PORT},
        ],
        "resources": resources(s.triton.resources, **{"nvidia.com/gpu": s.triton.gpus}),
        # CUDA and NVIDIA's entrypoint were not tried on a read-only root here; HOME and caches use /tmp.
        "securityContext": container_security(read_only_root=False),
        "volumeMounts": [
            tmp_mount,
            {"name": "models", "mountPath": MODELS_MOUNT, "readOnly": True},
            {"name": "dshm", "mountPath": "/dev/shm"},
        ],
        "startupProbe": http_probe("/v2/health/live", TRITON_HTTP_PORT, period_s=5, failures=60),
        "readinessProbe": http_probe("/v2/health/ready", TRITON_HTTP_PORT, period_s=10, failures=3),
        "livenessProbe": http_probe("/v2/health/live", TRITON_HTTP_PORT, period_s=20, failures=3),
    }
    pod = _pod(
        s,
        [container],
        volumes,
        nodeSelector=dict(s.triton.node_selector),
        tolerations=[dict(t) for t in s.triton.tolerations],
        # Triton's --exit-timeout-secs (10) plus room for in-flight generations to finish.
        terminationGracePeriodSeconds=60,
    )
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata(name, ns, name),
        "spec": {
            "replicas": 1,
            "strategy": {"type": "Recreate"},  # the GPU is not free until the old pod is gone
            "selector": selector(name),
            "template": {"metadata": {"labels": labels(name)}, "spec": pod},
        },
    }
    ports = [("http", TRITON_HTTP_PORT), ("grpc", TRITON_GRPC_PORT), ("metrics", TRITON_METRICS_PORT)]
    return [deployment, service(name, ns, name, ports)]


def controller(s: DeploySettings, *, triton_url: str, mount_path: str, triton_pods: dict[str, str]) -> Manifest:
    """The rollout controller: writes the model volume at the same path Triton reads it (links are absolute)."""
    name, ns = "controller", s.namespace
    tmp, tmp_mount = tmp_volume()
    metrics = [
        f"http://gateway-{index}.{GATEWAY_HEADLESS}.{ns}.svc:{GATEWAY_PORT}/metrics"
        for index in range(s.gateway.max_replicas)
    ]
    container = {
        "name": name,
        "image": s.images.gateway,
        "command": ["python", "-m", "serving.rollout"],
        "env": env(
            {
                "MLFLOW_TRACKING_URI": f"http://mlflow:{MLFLOW_PORT}",
                "CONTROLLER_GATEWAYS": ",".join(metrics),
                "CONTROLLER_TRITON_HTTP_URL": triton_url,
                "CONTROLLER_TRITON_REPOSITORY": f"{mount_path}/repository",
                "CONTROLLER_CACHE_DIR": f"{mount_path}/versions",
            }
        ),
        "resources": resources(s.controller.resources),
        "securityContext": container_security(),
        "volumeMounts": [tmp_mount, {"name": "models", "mountPath": mount_path}],
    }
    volumes = [tmp, {"name": "models", "persistentVolumeClaim": {"claimName": MODELS_CLAIM}}]
    extra: dict[str, object] = {}
    if s.storage.access_mode == "ReadWriteOnce":
        # A ReadWriteOnce volume mounts on one node only: run beside the Triton that reads it.
        term = {"labelSelector": {"matchLabels": triton_pods}, "topologyKey": "kubernetes.io/hostname"}
        extra["affinity"] = {"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [term]}}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata(name, ns, name),
        "spec": {
            # One: it acts only while it holds the registry lease, so a second would only stand by.
            "replicas": 1,
            "strategy": {"type": "Recreate"},
            "selector": selector(name),
            "template": {"metadata": {"labels": labels(name)}, "spec": _pod(s, [container], volumes, **extra)},
        },
    }


def gateway(s: DeploySettings, *, triton_url: str) -> list[Manifest]:
    """Gateway replicas with stable names (see the module docstring), their Services, autoscaler and budget."""
    name, ns, g = "gateway", s.namespace, s.gateway
    tmp, tmp_mount = tmp_volume()
    container = {
        "name": name,
        "image": s.images.gateway,
        "env": [
            *env(
                {
                    "GATEWAY_HOST": "0.0.0.0",
                    # On purpose: the pod network is reached only through the ingress (NetworkPolicy).
                    "GATEWAY_ALLOW_NON_LOOPBACK": "true",
                    "GATEWAY_PORT": str(GATEWAY_PORT),
                    "GATEWAY_TRITON_URL": triton_url,
                    "MLFLOW_TRACKING_URI": f"http://mlflow:{MLFLOW_PORT}",
                }
            ),
            {
                "name": "GATEWAY_ADMIN_TOKEN",
                "valueFrom": {"secretKeyRef": {"name": s.secrets.admin_token, "key": "token"}},
            },
        ],
        "ports": [{"name": "http", "containerPort": GATEWAY_PORT}],
        "resources": resources(g.resources),
        "securityContext": container_security(),
        "volumeMounts": [tmp_mount],
        "startupProbe": http_probe("/healthz", GATEWAY_PORT, period_s=2, failures=30),
        "readinessProbe": http_probe("/readyz", GATEWAY_PORT, period_s=5, failures=2),
        "livenessProbe": http_probe("/healthz", GATEWAY_PORT, period_s=10, failures=3),
    }
    statefulset = {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": metadata(name, ns, name),
        "spec": {
            "serviceName": GATEWAY_HEADLESS,
            "replicas": g.min_replicas,
            # Replicas are interchangeable: start and stop them together, not one by one.
            "podManagementPolicy": "Parallel",
            "selector": selector(name),
            "template": {"metadata": {"labels": labels(name)}, "spec": _pod(s, [container], [tmp])},
        },
    }
    headless = service(GATEWAY_HEADLESS, ns, name, [("http", GATEWAY_PORT)], clusterIP="None")
    autoscaler = {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": metadata(name, ns, name),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "StatefulSet", "name": name},
            "minReplicas": g.min_replicas,
            "maxReplicas": g.max_replicas,
            "metrics": [
                {
                    "type": "Resource",
                    "resource": {
                        "name": "cpu",
                        "target": {"type": "Utilization", "averageUtilization": g.target_cpu_percent},
                    },
                }
            ],
        },
    }
    budget = {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": metadata(name, ns, name),
        "spec": {"minAvailable": 1, "selector": selector(name)},
    }
    return [statefulset, headless, service(name, ns, name, [("http", GATEWAY_PORT)]), autoscaler, budget]
