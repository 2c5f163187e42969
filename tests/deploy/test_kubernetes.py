"""deploy/: every rendered manifest validates strictly (unknown fields are errors) against a pinned
Kubernetes version, the InferenceService against KServe's schema, and the pieces fit each other."""

from __future__ import annotations

import json
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import ValidationError as KubernetesValidationError
from kubernetes_validate.utils import validate
from referencing import Registry, Resource

from deploy import render
from deploy.network import SecretsError, ingress_annotations, secrets_from_environment
from deploy.settings import DeploySettings, SettingsError, load_settings
from serving.edge.config import PUBLIC_PATHS, PUBLIC_PREFIXES
from serving.edge.settings import EdgeSettings
from serving.gateway.settings import GatewaySettings
from serving.rollout.settings import ControllerSettings
from tests.deploy.conftest import DEPLOY, DOCKER, dockerfile

#: The oldest Kubernetes these manifests promise to work on; validated strictly against it.
KUBERNETES_VERSION = "1.31.0"
EXAMPLE = DEPLOY / "settings.example.yaml"
KSERVE_SCHEMA = Path(__file__).with_name("kserve-v1beta1-inferenceservice.schema.json")
TOKEN = "t" * 32


@pytest.fixture(scope="module")
def settings() -> DeploySettings:
    return load_settings(EXAMPLE)


@pytest.fixture(scope="module")
def rendered(settings: DeploySettings) -> dict[str, dict[str, list[dict[str, Any]]]]:
    return render.render(settings)


def manifests(rendered: dict[str, dict[str, list[dict[str, Any]]]], form: str) -> list[dict[str, Any]]:
    return [m for file in rendered[form].values() for m in file]


def find(rendered: Any, form: str, kind: str, name: str) -> dict[str, Any]:
    (found,) = [m for m in manifests(rendered, form) if m["kind"] == kind and m["metadata"]["name"] == name]
    return found


def pod_specs(items: list[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """(workload, pod spec) for every workload; the InferenceService's predictor counts as a pod spec."""
    for m in items:
        if m["kind"] in ("Deployment", "StatefulSet"):
            yield m, m["spec"]["template"]["spec"]
        elif m["kind"] == "InferenceService":
            predictor = m["spec"]["predictor"]
            yield m, {**predictor, "containers": [predictor["model"]]}


def kserve_validator() -> jsonschema.Draft202012Validator:
    root = Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema" / f"v{KUBERNETES_VERSION}-local-strict"
    definitions = json.loads((root / "_definitions.json").read_text())
    schema = json.loads(KSERVE_SCHEMA.read_text())
    registry = Registry().with_resources(
        [(definitions["$id"], Resource.from_contents(definitions)), (schema["$id"], Resource.from_contents(schema))]
    )
    return jsonschema.Draft202012Validator(schema, registry=registry)


# -- validity -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("form", render.FORMS)
def test_every_manifest_validates_strictly(rendered: Any, form: str) -> None:
    items = manifests(rendered, form)
    kinds = {m["kind"] for m in items}
    assert {"Namespace", "Deployment", "StatefulSet", "Service", "HorizontalPodAutoscaler", "Ingress"} <= kinds
    for m in items:
        if m["kind"] == "InferenceService":
            errors = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in kserve_validator().iter_errors(m)]
            assert errors == []
        else:
            validate(m, KUBERNETES_VERSION, strict=True)


def test_strict_validation_refuses_an_unknown_field(rendered: Any) -> None:
    deployment = json.loads(json.dumps(find(rendered, "kubernetes", "Deployment", "triton")))
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(KubernetesValidationError):
        validate(deployment, KUBERNETES_VERSION, strict=True)


def test_kserve_schema_refuses_unknown_fields_down_to_kubernetes_types(rendered: Any, settings: DeploySettings) -> None:
    service = json.loads(json.dumps(find(rendered, "kserve", "InferenceService", settings.kserve.name)))
    service["spec"]["predictor"]["model"]["storageURI"] = "pvc://models"
    service["spec"]["predictor"]["model"]["resources"]["limitz"] = {}
    messages = sorted(e.message for e in kserve_validator().iter_errors(service))
    assert len(messages) == 2
    assert "'limitz' was unexpected" in messages[0] and "'storageURI' was unexpected" in messages[1]


def test_yaml_files_hold_what_was_rendered(rendered: Any, tmp_path: Path) -> None:
    written = render.write(rendered, tmp_path)
    for path in written:
        form, stem = path.parent.name, path.stem
        assert [d for d in yaml.safe_load_all(path.read_text()) if d] == rendered[form][stem]


# -- security -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("form", render.FORMS)
def test_pods_run_non_root_with_bounded_resources(rendered: Any, settings: DeploySettings, form: str) -> None:
    images = {settings.images.gateway, settings.images.triton, settings.images.mlflow}
    for workload, pod in pod_specs(manifests(rendered, form)):
        where = workload["metadata"]["name"]
        assert pod["securityContext"]["runAsNonRoot"] is True, where
        assert pod["securityContext"]["runAsUser"] == 10001, where
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, where
        for container in pod["containers"]:
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False and context["capabilities"] == {"drop": ["ALL"]}
            assert {"cpu", "memory"} <= set(container["resources"]["requests"]) <= set(container["resources"]["limits"])
            assert container["image"] in images
            for variable in container.get("env", []):
                secretish = any(word in variable["name"] for word in ("TOKEN", "PASSWORD", "SECRET"))
                if secretish and not variable["name"].endswith("_FILE"):
                    assert "value" not in variable, f"{where}: {variable['name']} is written in the manifest"
            # Read-only root everywhere but Triton (NVIDIA's entrypoint and CUDA were not tried read-only).
            assert context["readOnlyRootFilesystem"] is (where not in ("triton", settings.kserve.name))


def test_namespace_enforces_restricted_pod_security(rendered: Any) -> None:
    namespace = manifests(rendered, "kubernetes")[0]
    assert namespace["kind"] == "Namespace"
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def test_secrets_are_only_referenced(rendered: Any, settings: DeploySettings) -> None:
    for form in render.FORMS:
        assert "Secret" not in {m["kind"] for m in manifests(rendered, form)}
    gateway = find(rendered, "kubernetes", "StatefulSet", "gateway")["spec"]["template"]["spec"]["containers"][0]
    (token,) = [v for v in gateway["env"] if v["name"] == "GATEWAY_ADMIN_TOKEN"]
    assert token["valueFrom"] == {"secretKeyRef": {"name": settings.secrets.admin_token, "key": "token"}}
    mlflow = find(rendered, "kubernetes", "Deployment", "mlflow")["spec"]["template"]["spec"]
    (secret_volume,) = [v for v in mlflow["volumes"] if "secret" in v]
    assert secret_volume["secret"]["secretName"] == settings.secrets.mlflow_db
    env = {v["name"]: v["value"] for v in mlflow["containers"][0]["env"]}
    (mount,) = [m for m in mlflow["containers"][0]["volumeMounts"] if m["name"] == secret_volume["name"]]
    assert env["MLFLOW_DB_PASSWORD_FILE"] == f"{mount['mountPath']}/password"


def test_secrets_from_the_environment(settings: DeploySettings, tmp_path: Path) -> None:
    secrets = secrets_from_environment(settings, {"GATEWAY_ADMIN_TOKEN": TOKEN, "MLFLOW_DB_PASSWORD": "pw"})
    for secret in secrets:
        validate(secret, KUBERNETES_VERSION, strict=True)
    path = render.write_secrets(secrets, tmp_path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    loaded = [d for d in yaml.safe_load_all(path.read_text()) if d]
    assert {d["metadata"]["name"]: d["stringData"] for d in loaded} == {
        settings.secrets.admin_token: {"token": TOKEN},
        settings.secrets.mlflow_db: {"password": "pw"},
    }
    with pytest.raises(SecretsError, match="GATEWAY_ADMIN_TOKEN"):
        secrets_from_environment(settings, {"GATEWAY_ADMIN_TOKEN": "short", "MLFLOW_DB_PASSWORD": "pw"})
    with pytest.raises(SecretsError, match="MLFLOW_DB_PASSWORD"):
        secrets_from_environment(settings, {"GATEWAY_ADMIN_TOKEN": TOKEN})


# -- how the parts fit ------------------------------------------------------------------------------------


def _env(container: dict[str, Any], prefix: str) -> dict[str, str]:
    values = {v["name"]: v["value"] for v in container["env"] if "value" in v}
    return {k.removeprefix(prefix).lower(): v for k, v in values.items() if k.startswith(prefix)}


@pytest.mark.parametrize("form", render.FORMS)
def test_controller_reaches_every_gateway_replica_and_shares_tritons_volume(
    rendered: Any, settings: DeploySettings, form: str
) -> None:
    deployment = find(rendered, form, "Deployment", "controller")
    assert deployment["spec"]["replicas"] == 1
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    controller = ControllerSettings(**_env(container, "CONTROLLER_"))
    statefulset = find(rendered, form, "StatefulSet", "gateway")
    headless = statefulset["spec"]["serviceName"]
    assert find(rendered, form, "Service", headless)["spec"]["clusterIP"] == "None"
    assert controller.gateways == [
        f"http://gateway-{i}.{headless}.{settings.namespace}.svc:8000/metrics"
        for i in range(settings.gateway.max_replicas)
    ]
    (mount,) = [m["mountPath"] for m in container["volumeMounts"] if m["name"] == "models"]
    assert controller.triton_repository == Path(mount) / "repository"
    assert controller.cache_dir == Path(mount) / "versions"
    if form == "kubernetes":
        triton = find(rendered, form, "Deployment", "triton")["spec"]["template"]["spec"]
        (triton_mount,) = [m for m in triton["containers"][0]["volumeMounts"] if m["name"] == "models"]
        assert (triton_mount["mountPath"], triton_mount["readOnly"]) == (mount, True)
        (cmd,) = [i.value for i in dockerfile(DOCKER / "triton.Dockerfile") if i.keyword == "CMD"]
        assert f"--model-repository={controller.triton_repository}" in cmd
        assert controller.triton_http_url == "http://triton:8001"
    else:
        model = find(rendered, form, "InferenceService", settings.kserve.name)["spec"]["predictor"]["model"]
        assert mount == settings.kserve.pvc_mount_path
        assert f"--model-repository={controller.triton_repository}" in model["args"]
        assert "--model-control-mode=explicit" in model["args"]
        assert model["storageUri"] == "pvc://models"
        assert controller.triton_http_url == f"http://{settings.kserve.name}-predictor.{settings.namespace}.svc"


def test_read_write_once_pins_the_controller_next_to_triton(settings: DeploySettings) -> None:
    affinity = render.render(settings)["kubernetes"]["40-controller"][0]["spec"]["template"]["spec"]["affinity"]
    (term,) = affinity["podAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert term["labelSelector"]["matchLabels"]["app.kubernetes.io/component"] == "triton"
    shared = settings.model_copy(
        update={"storage": settings.storage.model_copy(update={"access_mode": "ReadWriteMany"})}
    )
    assert "affinity" not in render.render(shared)["kubernetes"]["40-controller"][0]["spec"]["template"]["spec"]


@pytest.mark.parametrize("form", render.FORMS)
def test_gateways_scale_and_probe(rendered: Any, settings: DeploySettings, form: str) -> None:
    statefulset = find(rendered, form, "StatefulSet", "gateway")
    assert statefulset["spec"]["replicas"] >= 2
    autoscaler = find(rendered, form, "HorizontalPodAutoscaler", "gateway")["spec"]
    assert autoscaler["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "gateway"}
    assert (autoscaler["minReplicas"], autoscaler["maxReplicas"]) == (2, settings.gateway.max_replicas)
    container = statefulset["spec"]["template"]["spec"]["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    gateway = GatewaySettings(**_env(container, "GATEWAY_"), admin_token=TOKEN)
    assert (gateway.host, gateway.port, gateway.dev) == ("0.0.0.0", 8000, False)
    controller = find(rendered, form, "Deployment", "controller")["spec"]["template"]["spec"]["containers"][0]
    assert gateway.triton_url == _env(controller, "CONTROLLER_")["triton_http_url"]


@pytest.mark.parametrize("form", render.FORMS)
def test_services_and_policies_select_real_pods_and_ports(rendered: Any, form: str) -> None:
    items = manifests(rendered, form)
    pods = [
        (labels, {p["containerPort"] for c in pod["containers"] for p in c.get("ports", [])})
        for workload, pod in pod_specs(items)
        for labels in [workload["spec"]["template"]["metadata"]["labels"] if "template" in workload["spec"] else {}]
    ]

    def matching(selector: dict[str, str]) -> list[set[int]]:
        return [ports for labels, ports in pods if selector.items() <= labels.items()]

    for service in (m for m in items if m["kind"] == "Service"):
        (ports,) = matching(service["spec"]["selector"])
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= ports, service["metadata"]["name"]
    for policy in (m for m in items if m["kind"] == "NetworkPolicy"):
        selector = policy["spec"]["podSelector"]["matchLabels"]
        if "serving.kserve.io/inferenceservice" not in selector:  # KServe labels its own pods
            assert len(matching(selector)) == 1, policy["metadata"]["name"]
        for rule in policy["spec"]["ingress"]:
            for peer in rule["from"]:
                if "podSelector" in peer:
                    assert len(matching(peer["podSelector"]["matchLabels"])) == 1
    ingress = find(rendered, form, "Ingress", "edge")
    for path in ingress["spec"]["rules"][0]["http"]["paths"]:
        backend = path["backend"]["service"]
        assert find(rendered, form, "Service", backend["name"])["spec"]["ports"][0]["port"] == backend["port"]["number"]


def test_ingress_serves_only_the_public_paths(rendered: Any) -> None:
    # The admin API, /metrics, the status page and /readyz must not be reachable from outside: only
    # the compose edge's public paths, each matched exactly (a Prefix "/" would route every path).
    ingress = find(rendered, "kubernetes", "Ingress", "edge")
    paths = ingress["spec"]["rules"][0]["http"]["paths"]
    assert [(p["path"], p["pathType"]) for p in paths] == [(path, "Exact") for path in PUBLIC_PATHS] + [
        (prefix, "Prefix") for prefix in PUBLIC_PREFIXES
    ]
    assert {"/v1/chat/completions", "/v1/models", "/healthz"} == set(PUBLIC_PATHS)
    assert PUBLIC_PREFIXES == ("/v1/models/",)  # GET /v1/models/{model}: the gateway routes it to one handler


def test_ingress_limits_are_the_edges() -> None:
    edge = EdgeSettings.model_construct()  # the code's defaults, whatever EDGE_* says here
    annotations = ingress_annotations()
    prefix = "nginx.ingress.kubernetes.io/"
    assert annotations[prefix + "proxy-body-size"] == edge.client_max_body_size == "20m"
    assert int(annotations[prefix + "limit-rps"]) == edge.rate_per_s
    assert int(annotations[prefix + "limit-rps"]) * int(annotations[prefix + "limit-burst-multiplier"]) == edge.burst
    assert annotations[prefix + "proxy-read-timeout"] == str(edge.read_timeout_s)
    # A POST that reached a gateway is never sent again (an admin step would step twice).
    assert "non_idempotent" not in annotations[prefix + "proxy-next-upstream"]
    assert annotations[prefix + "proxy-next-upstream"].split() == ["error", "timeout"]


def test_triton_gets_its_gpus_and_nothing_else_reaches_it(rendered: Any, settings: DeploySettings) -> None:
    deployment = find(rendered, "kubernetes", "Deployment", "triton")
    assert (deployment["spec"]["replicas"], deployment["spec"]["strategy"]["type"]) == (1, "Recreate")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == settings.triton.gpus
    policy = find(rendered, "kubernetes", "NetworkPolicy", "allow-triton")["spec"]["ingress"]
    components = {peer["podSelector"]["matchLabels"]["app.kubernetes.io/component"] for peer in policy[0]["from"]}
    assert components == {"gateway", "controller"}
    isvc = find(rendered, "kserve", "InferenceService", settings.kserve.name)
    assert isvc["spec"]["predictor"]["model"]["resources"]["limits"]["nvidia.com/gpu"] == settings.triton.gpus
    assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "RawDeployment"


# -- settings and the CLI -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda raw: raw["images"].update(gateway="registry.example.com/gateway:latest"), "images.gateway"),
        (lambda raw: raw["images"].update(triton="registry.example.com/triton"), "images.triton"),
        (lambda raw: raw["gateway"].update(min_replicas=1), "gateway.min_replicas"),
        (lambda raw: raw["gateway"].update(max_replicas=2, min_replicas=3), "below min_replicas"),
        (lambda raw: raw["mlflow"].update(artifacts_destination="relative/path"), "mlflow.artifacts_destination"),
        (lambda raw: raw["triton"]["resources"]["limits"].pop("memory"), "set memory"),
        (lambda raw: raw.pop("kserve"), "kserve"),
        (lambda raw: raw["storage"].update(acess_mode="ReadWriteMany"), "storage.acess_mode"),
    ],
)
def test_bad_settings_fail_with_the_key(tmp_path: Path, edit: Any, message: str) -> None:
    raw = yaml.safe_load(EXAMPLE.read_text())
    edit(raw)
    path = tmp_path / "settings.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(SettingsError, match=message):
        load_settings(path)


def test_object_storage_artifacts_need_no_volume(settings: DeploySettings) -> None:
    s3 = settings.model_copy(
        update={
            "mlflow": settings.mlflow.model_copy(
                update={"artifacts_destination": "s3://bucket/mlflow", "storage_credentials_secret": "mlflow-s3"}
            )
        }
    )
    files = render.render(s3)["kubernetes"]["20-mlflow"]
    assert [m["kind"] for m in files] == ["Deployment", "Service"]
    container = files[0]["spec"]["template"]["spec"]["containers"][0]
    assert container["envFrom"] == [{"secretRef": {"name": "mlflow-s3"}}]
    for m in files:
        validate(m, KUBERNETES_VERSION, strict=True)


def test_cli_renders_both_forms_and_secrets_only_on_request(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "kubernetes").mkdir()
    (tmp_path / "kubernetes" / "99-stale.yaml").write_text("kind: Stale\n")

    assert render.main(["--settings", str(EXAMPLE), "--out", str(tmp_path)]) == 0

    assert sorted(p.name for p in (tmp_path / "kubernetes").iterdir()) == [f"{stem}.yaml" for stem in render._FILES]
    assert sorted(p.name for p in (tmp_path / "kserve").iterdir()) == [f"{stem}.yaml" for stem in render._FILES]
    assert not (tmp_path / "secrets.yaml").exists()
    monkeypatch.setenv("GATEWAY_ADMIN_TOKEN", TOKEN)
    monkeypatch.delenv("MLFLOW_DB_PASSWORD", raising=False)
    assert render.main(["--settings", str(EXAMPLE), "--out", str(tmp_path), "--secrets-from-env"]) == 2
    assert "MLFLOW_DB_PASSWORD" in capsys.readouterr().err
    monkeypatch.setenv("MLFLOW_DB_PASSWORD", "pw")
    assert render.main(["--settings", str(EXAMPLE), "--out", str(tmp_path), "--secrets-from-env"]) == 0
    assert (tmp_path / "secrets.yaml").is_file()
