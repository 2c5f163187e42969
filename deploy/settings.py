"""What differs between clusters: one YAML file (deploy/settings.example.yaml), read into typed settings.

Every field is required and has no default here: the example file is the one place defaults live, and a
missing or misspelt key fails at load with its name.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|Ki|Mi|Gi|Ti|M|G|T)?$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_HOST = re.compile(r"^([a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?\.)+[a-z]{2,}$")


class SettingsError(Exception):
    """The settings file is missing or invalid; the message names the key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _quantity(value: str, what: str) -> str:
    if not _QUANTITY.match(value):
        raise ValueError(f"{what} {value!r} is not a Kubernetes quantity (e.g. 500m, 2, 8Gi)")
    return value


class Resources(_Strict):
    """Requests and limits of one container (cpu, memory)."""

    requests: dict[str, str]
    limits: dict[str, str]

    @field_validator("requests", "limits")
    @classmethod
    def _quantities(cls, value: dict[str, str]) -> dict[str, str]:
        for key, quantity in value.items():
            if key not in ("cpu", "memory"):
                raise ValueError(f"{key!r}: give cpu and memory here (GPUs come from triton.gpus)")
            _quantity(quantity, key)
        if "memory" not in value:
            raise ValueError("set memory: a container without a memory bound can starve its node")
        return value


class Images(_Strict):
    """Full image references built from containers/ (a tag or a digest, never `latest`)."""

    gateway: str
    triton: str
    mlflow: str

    @field_validator("gateway", "triton", "mlflow")
    @classmethod
    def _pinned(cls, value: str) -> str:
        name = value.rsplit("/", 1)[-1]
        if "@sha256:" not in value and (":" not in name or name.endswith(":latest")):
            raise ValueError(f"image {value!r} needs a tag or digest other than latest (rollbacks need a fixed image)")
        return value


class GatewayDeploy(_Strict):
    # Two at least: one replica may restart (or roll) while the other serves.
    min_replicas: int = Field(ge=2)
    max_replicas: int = Field(ge=2, le=32)
    target_cpu_percent: int = Field(ge=10, le=95)
    resources: Resources

    @model_validator(mode="after")
    def _range(self) -> GatewayDeploy:
        if self.max_replicas < self.min_replicas:
            raise ValueError(f"max_replicas {self.max_replicas} is below min_replicas {self.min_replicas}")
        return self


class ControllerDeploy(_Strict):
    resources: Resources


class TritonDeploy(_Strict):
    gpus: int = Field(ge=1)
    resources: Resources
    # /dev/shm for the Python backend's tensors (Docker's and Kubernetes' 64 MB default is too small).
    shm_size: str
    node_selector: dict[str, str]
    tolerations: list[dict[str, str]]

    @field_validator("shm_size")
    @classmethod
    def _shm(cls, value: str) -> str:
        return _quantity(value, "shm_size")


class MlflowDeploy(_Strict):
    db_host: str = Field(min_length=1)
    db_port: int = Field(ge=1, le=65535)
    db_name: str = Field(min_length=1)
    db_user: str = Field(min_length=1)
    # An absolute path (a PVC of artifacts_size is mounted there) or s3://bucket/prefix, gs://bucket/prefix.
    artifacts_destination: str
    artifacts_size: str
    # A Secret whose keys become the server's environment (AWS_ACCESS_KEY_ID, ...); None: workload identity.
    storage_credentials_secret: str | None
    resources: Resources

    @field_validator("artifacts_destination")
    @classmethod
    def _destination(cls, value: str) -> str:
        if not value.startswith(("/", "s3://", "gs://")):
            raise ValueError(f"artifacts_destination {value!r}: give an absolute path, s3://... or gs://...")
        return value

    @property
    def artifacts_on_volume(self) -> bool:
        return self.artifacts_destination.startswith("/")


class Storage(_Strict):
    # None: the cluster's default storage class.
    class_name: str | None
    # ReadWriteMany lets the controller and Triton run on any nodes; ReadWriteOnce pins them together.
    access_mode: Literal["ReadWriteMany", "ReadWriteOnce"]
    model_repository_size: str

    @field_validator("model_repository_size")
    @classmethod
    def _size(cls, value: str) -> str:
        return _quantity(value, "model_repository_size")


class IngressDeploy(_Strict):
    host: str
    class_name: str
    tls_secret: str | None
    # Where the ingress-nginx controller runs: only it may reach the gateways (NetworkPolicy).
    controller_namespace: str

    @field_validator("host")
    @classmethod
    def _host(cls, value: str) -> str:
        if not _HOST.match(value):
            raise ValueError(f"ingress host {value!r} is not a DNS name")
        return value


class KServeDeploy(_Strict):
    name: str
    # The ClusterServingRuntime that serves model format `triton` (KServe installs kserve-tritonserver).
    runtime: str
    # Where KServe mounts a pvc:// storageUri in the predictor (its default PVC handling): the controller
    # mounts the same volume at the same path, since the repository links into its version cache.
    pvc_mount_path: str

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _DNS_LABEL.match(value):
            raise ValueError(f"kserve.name {value!r} is not a DNS label")
        return value


class SecretNames(_Strict):
    """Secrets created outside the manifests (kubectl create secret, an external secrets operator)."""

    admin_token: str
    mlflow_db: str


class DeploySettings(_Strict):
    namespace: str
    images: Images
    gateway: GatewayDeploy
    controller: ControllerDeploy
    triton: TritonDeploy
    mlflow: MlflowDeploy
    storage: Storage
    ingress: IngressDeploy
    kserve: KServeDeploy
    secrets: SecretNames

    @field_validator("namespace")
    @classmethod
    def _namespace(cls, value: str) -> str:
        if not _DNS_LABEL.match(value):
            raise ValueError(f"namespace {value!r} is not a DNS label")
        return value


def load_settings(path: Path) -> DeploySettings:
    """Read and check a settings file; SettingsError names each bad key."""
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise SettingsError(f"{path}: cannot read deploy settings: {exc}") from exc
    try:
        return DeploySettings.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors())
        raise SettingsError(f"{path}: {problems}") from exc
