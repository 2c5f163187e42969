"""The container images and the compose stack, checked offline (no Docker engine here).

hadolint lints every Dockerfile; the compose file is validated against the compose-spec schema (and by
`docker compose config` where the CLI plugin exists); every pinned version equals requirements.lock;
the services' environments are parsed by the project's own settings classes.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from registry.settings import RegistrySettings
from serving.edge.settings import EdgeSettings
from serving.gateway.settings import GatewaySettings
from serving.rollout.settings import ControllerSettings
from tests.deploy.conftest import (
    COMPOSE,
    DOCKER,
    DOCKERFILES,
    REQUIREMENTS,
    ROOT,
    compose,
    dockerfile,
    installable,
    interpolate,
    lock_pins,
    normalize,
    requirement_pins,
    shell_words,
    third_party_imports,
)

HADOLINT = Path(sys.executable).parent / "hadolint"
TRITON_BASE = "nvcr.io/nvidia/tritonserver:24.10-py3"  # Triton 2.51, the version the project runs
PYTHON_BASE = "python:3.11-slim-bookworm"
SECRET_WORDS = ("PASSWORD", "TOKEN", "SECRET", "CREDENTIAL", "ACCESS_KEY")
# What a user sets before `docker compose up` (values here are for parsing only).
ENV = {"GATEWAY_ADMIN_TOKEN": "x" * 32, "POSTGRES_PASSWORD_FILE": "/run/user/secret"}
IMAGES = {path.name.removesuffix(".Dockerfile") for path in DOCKERFILES}


def test_the_four_images_exist() -> None:
    assert {"gateway", "triton", "mlflow", "edge"} == IMAGES


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_finds_nothing(path: Path) -> None:
    result = subprocess.run(
        [str(HADOLINT), "--no-color", "--failure-threshold", "style", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_hadolint_is_live(tmp_path: Path) -> None:
    bad = tmp_path / "bad.Dockerfile"
    bad.write_text("FROM python\nRUN pip install requests\n")
    result = subprocess.run([str(HADOLINT), "--no-color", str(bad)], capture_output=True, text=True, check=False)
    assert result.returncode != 0
    assert "DL3006" in result.stdout  # untagged base image


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_every_hadolint_ignore_says_why(path: Path) -> None:
    for instruction in dockerfile(path):
        pragmas = [c for c in instruction.comments if c.startswith("# hadolint ignore=")]
        reasons = [c for c in instruction.comments if not c.startswith("# hadolint")]
        if pragmas:
            assert reasons, f"{path.name}:{instruction.line}: {pragmas[0]} without a comment saying why"


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_images_run_as_a_fixed_non_root_user_with_a_healthcheck(path: Path) -> None:
    instructions = dockerfile(path)
    users = [i.value for i in instructions if i.keyword == "USER"]
    assert users, f"{path.name}: no USER"
    assert users[-1] == "10001:10001"
    healthchecks = [i.value for i in instructions if i.keyword == "HEALTHCHECK"]
    assert len(healthchecks) == 1
    assert "/usr/local/bin/healthcheck.py" in healthchecks[0]


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_no_secret_is_baked_in(path: Path) -> None:
    for instruction in dockerfile(path):
        if instruction.keyword not in ("ENV", "ARG"):
            continue
        for word in shell_words(instruction.value):
            name, has_value, _value = word.partition("=")
            if any(secret in name.upper() for secret in SECRET_WORDS):
                assert not has_value, f"{path.name}:{instruction.line}: {name} has a value in the image"


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_base_images_are_pinned(path: Path) -> None:
    (base,) = [i.value for i in dockerfile(path) if i.keyword == "FROM"]
    assert ":" in base and not base.endswith(":latest"), base
    # One Python base for the project's own images: the Python the lock was resolved for (3.11).
    assert base == (TRITON_BASE if path.name == "triton.Dockerfile" else PYTHON_BASE)


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_pip_installs_only_pinned_requirement_files_under_the_lock(path: Path) -> None:
    installs = 0
    for instruction in dockerfile(path):
        if instruction.keyword != "RUN":
            continue
        for command in instruction.value.split("&&"):
            words = shell_words(command)
            if "pip" not in {Path(w).name for w in words[:1]} or "install" not in words:
                continue
            installs += 1
            args = words[words.index("install") + 1 :]
            files = [args[i + 1] for i, a in enumerate(args) if a == "-r"]
            constraints = [args[i + 1] for i, a in enumerate(args) if a == "-c"]
            loose = [a for i, a in enumerate(args) if not a.startswith("-") and args[i - 1] not in ("-r", "-c")]
            assert files and not loose, f"{path.name}:{instruction.line}: install only -r files, got {loose}"
            assert all((DOCKER / "requirements" / Path(f).name).is_file() for f in files)
            if "--no-deps" not in args:
                assert constraints == ["/tmp/requirements/requirements.lock"], f"{path.name}: -c requirements.lock"
    assert installs >= 1


@pytest.mark.parametrize("path", REQUIREMENTS, ids=lambda p: p.name)
def test_every_pinned_version_equals_the_lock(path: Path) -> None:
    lock = lock_pins()
    pins = requirement_pins(path)
    assert pins
    for name, version, line in pins:
        assert name in lock, f"{path.name}:{line}: {name} is not in requirements.lock; add it to requirements.in"
        assert version == lock[name], f"{path.name}:{line}: {name}=={version}, requirements.lock has {lock[name]}"


def test_the_pin_check_can_fail(tmp_path: Path) -> None:
    stale = tmp_path / "stale.txt"
    stale.write_text("torch==2.0.0\n")
    with pytest.raises(AssertionError, match=r"requirements\.lock has"):
        test_every_pinned_version_equals_the_lock(stale)
    loose = tmp_path / "loose.txt"
    loose.write_text("torch>=2\n")
    with pytest.raises(AssertionError, match="not pinned"):
        requirement_pins(loose)


def test_triton_image_has_the_python_backend_dependencies() -> None:
    names = {name for name, _, _ in requirement_pins(DOCKER / "requirements" / "triton.txt")}
    assert {
        "transformers",
        "accelerate",
        "bitsandbytes",
        "safetensors",
        "tokenizers",
        "pillow",
        "numpy",
        "torch",
    } <= names
    assert lock_pins()["numpy"].startswith("1.")  # the backend stub needs numpy<2


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_dockerignore_admits_exactly_what_is_copied(path: Path) -> None:
    ignore = path.with_name(path.name + ".dockerignore")
    patterns = [line for line in ignore.read_text().splitlines() if line and not line.startswith("#")]
    assert patterns[0] == "*", "start from nothing, then admit what the image copies"
    admitted = [p.removeprefix("!").rstrip("/") for p in patterns if p.startswith("!")]
    for instruction in dockerfile(path):
        if instruction.keyword != "COPY":
            continue
        sources = [w for w in shell_words(instruction.value) if not w.startswith("--")][:-1]
        for source in sources:
            source = source.rstrip("/")
            assert (ROOT / source).exists(), f"{path.name}:{instruction.line}: {source} does not exist"
            assert any(source == a or source.startswith(a + "/") for a in admitted), (
                f"{path.name}:{instruction.line}: {source} is excluded by {ignore.name}"
            )


# -- compose --------------------------------------------------------------------------------------------


def test_compose_matches_the_compose_spec_schema() -> None:
    result = _check_compose_schema(COMPOSE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_schema_check_catches_a_typo(tmp_path: Path) -> None:
    broken = tmp_path / "compose.yaml"
    broken.write_text(
        COMPOSE.read_text().replace(
            '    healthcheck:\n      test: ["CMD", "pg_isready"', '    healthchek:\n      test: ["CMD", "pg_isready"', 1
        )
    )
    assert broken.read_text() != COMPOSE.read_text()
    assert _check_compose_schema(broken).returncode != 0


def _check_compose_schema(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )


@pytest.mark.skipif(
    shutil.which("docker") is None
    or subprocess.run(["docker", "compose", "version"], capture_output=True, check=False).returncode != 0,
    reason="the docker compose CLI plugin is not installed here; the compose-spec schema test covers the file",
)
def test_docker_compose_config_accepts_it() -> None:  # pragma: no cover - needs the compose plugin
    result = subprocess.run(
        ["docker", "compose", "-f", str(COMPOSE), "config", "--quiet"],
        capture_output=True,
        text=True,
        env={**os.environ, **ENV},
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_secrets_are_required_from_the_environment() -> None:
    for missing in ENV:
        with pytest.raises(KeyError, match=missing):
            compose({k: v for k, v in ENV.items() if k != missing})


def test_no_secret_value_is_written_in_compose() -> None:
    raw = compose()
    for name, service in raw["services"].items():
        for key, value in (service.get("environment") or {}).items():
            if any(word in key for word in SECRET_WORDS) and not key.endswith("_FILE"):
                assert str(value).startswith("${") and ":?" in str(value), (
                    f"{name}: {key} must come from the environment"
                )


def test_only_the_edge_is_published_on_8080() -> None:
    services = compose(ENV)["services"]
    published = {name: service["ports"] for name, service in services.items() if service.get("ports")}
    assert published == {"edge": ["8080:8080"]}
    networks = compose(ENV)["networks"]
    assert networks["backend"]["internal"] is True
    for name, service in services.items():
        assert service["networks"] == (["frontend", "backend"] if name == "edge" else ["backend"]), name


def test_health_checks_and_start_order() -> None:
    services = compose(ENV)["services"]
    for name, service in services.items():
        check = service["healthcheck"]
        assert check.get("disable") is True if name == "controller" else check["test"][0] == "CMD", name
        for target, condition in (service.get("depends_on") or {}).items():
            assert condition["condition"] in ("service_healthy", "service_completed_successfully"), (name, target)
            assert not services[target]["healthcheck"].get("disable"), f"{name} waits on {target}, which has no check"
    assert set(services["edge"]["depends_on"]) == {"gateway-1", "gateway-2"}
    assert set(services["controller"]["depends_on"]) == {"mlflow", "triton"}
    assert set(services["mlflow"]["depends_on"]) == {"postgres"}


def test_triton_reserves_a_gpu_and_shares_the_controllers_repository() -> None:
    services = compose(ENV)["services"]
    triton, controller = services["triton"], services["controller"]
    (device,) = triton["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    assert triton["volumes"] == ["models:/models:ro"]
    assert controller["volumes"] == ["models:/models"]
    # Same mount path: the repository links into the version cache by absolute path.
    env = controller["environment"]
    assert env["CONTROLLER_TRITON_REPOSITORY"].startswith("/models/")
    assert env["CONTROLLER_CACHE_DIR"].startswith("/models/")
    (cmd,) = [i.value for i in dockerfile(DOCKER / "triton.Dockerfile") if i.keyword == "CMD"]
    assert "--model-control-mode=explicit" in cmd and f"--model-repository={env['CONTROLLER_TRITON_REPOSITORY']}" in cmd
    assert "command" not in triton, "the image's command is the one place Triton's flags live"


def test_two_gateways_behind_the_edge_and_scraped_by_the_controller() -> None:
    services = compose(ENV)["services"]
    gateways = sorted(
        name
        for name, s in services.items()
        if s.get("build", {}).get("dockerfile") == "containers/gateway.Dockerfile" and name != "controller"
    )
    assert gateways == ["gateway-1", "gateway-2"]
    edge = EdgeSettings(**_settings_kwargs(services["edge"]["environment"], "EDGE_"))
    assert edge.upstreams == [f"{name}:8000" for name in gateways]
    controller = ControllerSettings(**_settings_kwargs(services["controller"]["environment"], "CONTROLLER_"))
    assert controller.gateways == [f"http://{name}:8000/metrics" for name in gateways]


@pytest.mark.parametrize("name", ["gateway-1", "gateway-2"])
def test_gateway_environment_is_valid_gateway_settings(name: str) -> None:
    env = compose(ENV)["services"][name]["environment"]
    settings = GatewaySettings(**_settings_kwargs(env, "GATEWAY_"))
    assert (settings.host, settings.port, settings.dev) == ("0.0.0.0", 8000, False)
    assert settings.admin_token_bytes == ENV["GATEWAY_ADMIN_TOKEN"].encode()
    registry = RegistrySettings(tracking_uri=env["MLFLOW_TRACKING_URI"])
    assert registry.is_remote


def test_mlflow_options_are_ones_mlflow_server_reads() -> None:
    import mlflow.cli
    from mlflow import environment_variables

    known = {p.envvar for p in mlflow.cli.server.params if isinstance(getattr(p, "envvar", None), str)}
    known |= {name for name in dir(environment_variables) if name.startswith("MLFLOW_")}
    entrypoint = {"MLFLOW_DB_HOST", "MLFLOW_DB_USER", "MLFLOW_DB_NAME", "MLFLOW_DB_PORT", "MLFLOW_DB_PASSWORD_FILE"}
    names = set(compose(ENV)["services"]["mlflow"]["environment"])
    for instruction in dockerfile(DOCKER / "mlflow.Dockerfile"):
        if instruction.keyword == "ENV":
            names |= {w.partition("=")[0] for w in shell_words(instruction.value)}
    unknown = {n for n in names if n.startswith("MLFLOW_")} - known - entrypoint
    assert unknown == set()


def _settings_kwargs(env: dict[str, Any], prefix: str) -> dict[str, Any]:
    return {key.removeprefix(prefix).lower(): value for key, value in env.items() if key.startswith(prefix)}


def test_interpolation_helper_follows_compose_rules() -> None:
    assert interpolate("${A:-x}-${B}", {"B": "b"}) == "x-b"
    assert interpolate("${A:-x}", {"A": ""}) == "x"
    with pytest.raises(KeyError, match="need A"):
        interpolate("${A:?need A}", {})


# -- the MLflow entrypoint --------------------------------------------------------------------------------


@pytest.fixture()
def fake_mlflow(tmp_path: Path) -> Path:
    """A stand-in `mlflow` on PATH that records its argv and the backend-store URI it was given."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "mlflow"
    script.write_text(
        "#!/bin/sh\n"
        f'printf "%s\\n" "$@" > "{tmp_path}/argv"\n'
        f'printf "%s" "$MLFLOW_BACKEND_STORE_URI" > "{tmp_path}/uri"\n'
    )
    script.chmod(0o755)
    (bin_dir / "python").symlink_to(sys.executable)
    return bin_dir


def _entrypoint(bin_dir: Path, **env: str) -> subprocess.CompletedProcess[str]:
    base = {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "MLFLOW_DB_HOST": "postgres",
        "MLFLOW_DB_USER": "mlflow",
        "MLFLOW_DB_NAME": "mlflow",
    }
    return subprocess.run(
        [str(DOCKER / "mlflow-entrypoint.sh"), "--workers", "1"],
        env={**base, **env},
        capture_output=True,
        text=True,
        check=False,
    )


def test_entrypoint_builds_the_uri_from_the_secret_file(fake_mlflow: Path, tmp_path: Path) -> None:
    secret = tmp_path / "password"
    secret.write_text("p@ss:w/rd%\n")

    result = _entrypoint(fake_mlflow, MLFLOW_DB_PASSWORD_FILE=str(secret))

    assert result.returncode == 0, result.stderr
    assert (tmp_path / "uri").read_text() == "postgresql+psycopg2://mlflow:p%40ss%3Aw%2Frd%25@postgres:5432/mlflow"
    assert (tmp_path / "argv").read_text().split() == ["server", "--workers", "1"]
    assert "p@ss" not in result.stdout + result.stderr


@pytest.mark.parametrize(("content", "message"), [(None, "cannot read"), ("\n", "is empty")])
def test_entrypoint_refuses_a_missing_or_empty_secret(
    fake_mlflow: Path, tmp_path: Path, content: str | None, message: str
) -> None:
    secret = tmp_path / "password"
    if content is not None:
        secret.write_text(content)

    result = _entrypoint(fake_mlflow, MLFLOW_DB_PASSWORD_FILE=str(secret))

    assert result.returncode == 1
    assert message in result.stderr
    assert not (tmp_path / "argv").exists()


def test_compose_file_is_plain_yaml() -> None:
    # The anchors and merge keys resolve to whole services (what the schema and these tests read).
    assert yaml.safe_load(COMPOSE.read_text())["services"]["gateway-2"]["healthcheck"]["test"][-1].endswith("/healthz")


def test_the_operator_override_publishes_mlflow_on_loopback_only() -> None:
    override = COMPOSE.with_name("compose.operator.yaml")
    assert _check_compose_schema(override).returncode == 0
    services = yaml.safe_load(override.read_text())["services"]
    assert set(services) == {"mlflow"}
    assert services["mlflow"]["ports"] == ["127.0.0.1:5000:5000"]
    allowed = compose(ENV)["services"]["mlflow"]["environment"]["MLFLOW_SERVER_ALLOWED_HOSTS"].split(",")
    assert {"127.0.0.1:5000", "localhost:5000"} <= set(allowed)


IMAGE_ENTRIES = {
    # The gateway image runs the gateway, the controller and the registry CLI.
    "gateway.txt": [
        "serving.rollout.__main__",
        "registry.__main__",
        *(f"serving.gateway.{p.stem}" for p in (ROOT / "serving" / "gateway").glob("*.py")),
    ],
    "edge.txt": ["serving.edge.__main__"],
    # The Python backend's model.py, run by the Triton image's stub.
    "triton.txt": ["serving.backend.model"],
}
#: Modules the container provides itself.
PROVIDED = {"triton_python_backend_utils"}  # Triton's Python backend


@pytest.mark.parametrize("requirements", sorted(IMAGE_ENTRIES))
def test_images_hold_every_package_their_code_imports(requirements: str) -> None:
    from importlib import metadata

    available = installable(DOCKER / "requirements" / requirements)
    owners = metadata.packages_distributions()
    missing = {
        top: importer
        for top, importer in third_party_imports(IMAGE_ENTRIES[requirements]).items()
        if top not in PROVIDED and not {normalize(d) for d in owners.get(top, [top])} & available
    }
    assert missing == {}, f"imported by the image's code but not installed by {requirements}: {missing}"
