"""The whole serving stack as the fault and security tests use it: real processes, a scratch registry.

``serving.stack`` starts MLflow (a scratch sqlite store), Triton (explicit model control over a
repository the controller fills), the rollout controller, two gateway replicas and nginx, each a
detached process with its pid and log under the run folder, on free ports, exactly as ``make up``
and ``make demo`` do. This module adds what tests need around it: a known admin token, faster
polls, a rollout params file of the test's own, versions registered through the register stage's
own code from the committed tiny checkpoint, a closed-loop client that records every answer, and
helpers to kill, stop and restart single services.

Every service is wrapped so that it gets SIGTERM if the test process dies (``PR_SET_PDEATHSIG``,
kept across exec); the parent is the *thread* that started it, so start services from the main
thread only.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

import httpx
import pytest
import yaml

from core.manifest import manifest_digest, model_digests
from pipelines import register as register_stage
from registry import events, rollout
from registry.events import Actor, Event
from registry.settings import RegistrySettings
from registry.state import RolloutState, read_state
from registry.store import Store
from serving import stack as stack_module
from serving.gateway.drain import drain_limit_s
from serving.stack import Ports
from serving.triton.launcher import free_ports
from serving.triton.packaging import package
from tests.serving.conftest import BACKEND, serving_params
from tiny_model import shapes

#: The admin token every stack of these tests runs with; the security tests grep the logs for it.
TOKEN = "stack-fixture-admin-6f1d2c9a8b7e4f30a1b2c3d4"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MODEL = "qwen3-vl"
EXPERIMENT = "stack-tests"
ACTOR = Actor(name="stack tests")

#: The rollout policy of these stacks (ROLLOUT_* settings of the controller): one step at 50%, then
#: 100%, held at least 12 s (a test has time to act on a step); no golden probes. Champion and canary
#: are the same tiny model here and these tests are about failures, not latency: a freshly loaded
#: canary's first answers on a loaded 2-core machine can be 10x slower than the champion's (seen: p95
#: 575 ms against 44 ms), so latency counts as harm only past 3x. Tests of the verdicts themselves
#: (tests/faults/test_verdicts.py) run the shipped policy.
ROLLOUT = {
    "ROLLOUT_STEPS": "50,100",
    "ROLLOUT_MIN_STEP_S": "12",
    "ROLLOUT_LATENCY_TOLERANCE": "3",
    "ROLLOUT_LATENCY_MARGIN": "3",
    "ROLLOUT_TAIL_MARGIN": "5",
    "ROLLOUT_PROBE_RPS": "0",
}

_DEATH_SIGNAL = """
import ctypes, ctypes.util, os, signal, sys
ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
if os.getppid() == int(sys.argv[1]):
    os.execv(sys.argv[2], sys.argv[2:])
"""


def question(index: int) -> dict[str, Any]:
    """An OpenAI chat request with one image and its question (the tiny model's task)."""
    sample = shapes.sample(4242, index, category=shapes.CATEGORIES[index % len(shapes.CATEGORIES)])
    buffer = io.BytesIO()
    sample.image.save(buffer, format="PNG")
    url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    content = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": sample.question}]
    return {"model": MODEL, "messages": [{"role": "user", "content": content}], "max_tokens": 4}


# -- registering versions ---------------------------------------------------------------------------


def write_build(
    project: Path,
    build: int,
    checkpoint: Path,
    edit: Callable[[Path], None] | None = None,
    **package_overrides: Any,
) -> register_stage.RegisterInputs:
    """One packaged build with the register stage's inputs, as ``dvc repro`` would leave them.

    The validate verdict is written, not measured (``passed`` with the digest of exactly these files):
    these tests are about serving, and the gate has tests of its own. ``edit`` changes the packaged
    model folder first (a hand-edited config that would never have passed validation).
    """
    project.mkdir(parents=True, exist_ok=True)
    repository = project / "triton-models"
    params = serving_params(version=build, **package_overrides)
    result = package(checkpoint, BACKEND, repository, MODEL, params)
    model_dir = repository / result.triton_model
    if edit is not None:
        edit(model_dir)
    metrics = project / f"metrics-{build}"
    metrics.mkdir(exist_ok=True)
    params_file = project / f"params-{build}.yaml"
    params_file.write_text(yaml.safe_dump({"package": params.model_dump(mode="json"), "build": build}))
    lock = project / f"dvc-{build}.lock"
    lock.write_text(f"schema: '2.0'\nbuild: {build}\n")
    digest = manifest_digest(model_digests(model_dir, str(build)))
    validate = {
        "model": result.triton_model,
        "version": build,
        "served_digest": digest,
        "accuracy": 0.98,
        "reference_accuracy": 0.98,
        "drop": 0.0,
        "passed": True,
        "config_errors": 0,
    }
    files = {
        "validate.json": validate,
        "package.json": result.model_dump(),
        "quantize.json": {"method": "none"},
        "base_model.json": {"golden_accuracy": 0.98},
    }
    for name, content in files.items():
        (metrics / name).write_text(json.dumps(content))
    return register_stage.RegisterInputs(
        params=params_file,
        lock=lock,
        validate_metrics=metrics / "validate.json",
        package_metrics=metrics / "package.json",
        quantize_metrics=metrics / "quantize.json",
        other_metrics=(metrics / "base_model.json",),
        triton_repo=repository,
    )


# -- a closed-loop client ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    """One request as the client saw it."""

    started: float
    seconds: float
    status: int  # 0: no HTTP answer (connection error or client timeout)
    version: str
    retry_after: str | None
    detail: str


@dataclass
class Load:
    """``workers`` closed-loop clients posting chat requests to ``url`` until ``stop()``; no session key,
    so each request draws its own point of the split (the canary's share follows the weight)."""

    url: str
    workers: int = 3
    timeout_s: float = 30.0
    pause_s: float = 0.02
    answers: list[Answer] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> Load:
        bodies = [question(i) for i in range(12)]
        for n in range(self.workers):
            thread = threading.Thread(target=self._worker, args=(n, bodies), name=f"load-{n}", daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> list[Answer]:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=self.timeout_s + 10)
        return self.snapshot()

    def snapshot(self) -> list[Answer]:
        with self._lock:
            return list(self.answers)

    def since(self, moment: float) -> list[Answer]:
        return [a for a in self.snapshot() if a.started >= moment]

    def _worker(self, n: int, bodies: list[dict[str, Any]]) -> None:
        with httpx.Client(timeout=self.timeout_s) as client:
            i = n
            while not self._stop.is_set():
                started = time.monotonic()
                try:
                    response = client.post(f"{self.url}/v1/chat/completions", json=bodies[i % len(bodies)])
                    answer = Answer(
                        started,
                        time.monotonic() - started,
                        response.status_code,
                        response.headers.get("x-model-version", ""),
                        response.headers.get("retry-after"),
                        "" if response.status_code == 200 else response.text[:300],
                    )
                except httpx.HTTPError as exc:
                    answer = Answer(started, time.monotonic() - started, 0, "", None, f"{type(exc).__name__}: {exc}")
                with self._lock:
                    self.answers.append(answer)
                i += self.workers
                time.sleep(self.pause_s)


def summary(answers: list[Answer]) -> dict[str, Any]:
    """Counts a person reads in a failure message: statuses, versions, a few error samples."""
    return {
        "requests": len(answers),
        "by_status": dict(Counter(a.status for a in answers)),
        "by_version": dict(Counter(a.version for a in answers if a.status == 200)),
        "errors": [f"{a.status}: {a.detail}" for a in answers if a.status != 200][:5],
        "slowest_s": round(max((a.seconds for a in answers), default=0.0), 2),
    }


def failures(answers: list[Answer]) -> list[Answer]:
    return [a for a in answers if a.status != 200]


# -- the stack --------------------------------------------------------------------------------------


def wait_until(check: Callable[[], Any], what: str, timeout_s: float, poll_s: float = 0.2) -> Any:
    """Poll ``check`` until it returns something truthy (returned); fail naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(poll_s)


class Stack:
    """One running stack; ``services`` by name (``mlflow``, ``triton``, ``controller``, ``gateway-1``,
    ``gateway-2``, ``nginx``)."""

    def __init__(self, run_dir: Path, checkpoint: Path) -> None:
        self.run_dir = run_dir
        self.checkpoint = checkpoint
        self.project = run_dir / "project"
        self.project.mkdir(parents=True, exist_ok=True)
        # The registry reads the model name from here, not the repo's.
        (self.project / "params.yaml").write_text(
            yaml.safe_dump({"registry": {"model_name": MODEL, "experiment": EXPERIMENT}})
        )
        http, grpc, metrics, mlflow, edge, internal, gw1, gw2 = free_ports(8)
        self.ports = Ports(
            edge=edge,
            edge_internal=internal,
            gateways=(gw1, gw2),
            triton_http=http,
            triton_grpc=grpc,
            triton_metrics=metrics,
            mlflow=mlflow,
        )
        self.store_dir = run_dir / "mlflow"
        with mock.patch.dict(os.environ, {"GATEWAY_ADMIN_TOKEN": TOKEN}):
            listed = stack_module.services(run_dir, self.ports, store_dir=self.store_dir)
        common = {
            "REGISTRY_MODEL_NAME": MODEL,
            "REGISTRY_EXPERIMENT": EXPERIMENT,
            "REGISTRY_PROJECT_DIR": str(self.project),
            "MLFLOW_DISABLE_TELEMETRY": "true",
        }
        for service in listed:
            service.env.update(common)
            service.command = [sys.executable, "-c", _DEATH_SIGNAL, str(os.getpid()), *service.command]
        self.services = {service.name: service for service in listed}
        for name in ("gateway-1", "gateway-2"):
            self.services[name].env.update(
                {
                    "GATEWAY_ADMIN_TOKEN": TOKEN,
                    "GATEWAY_REGISTRY_POLL_S": "0.25",
                    "GATEWAY_TRITON_POLL_S": "0.25",
                    # A hung canary attempt is cut here and answered by the champion.
                    "GATEWAY_UPSTREAM_TIMEOUT_S": "2",
                }
            )
            self.services[name].stop_timeout_s = drain_limit_s(2.0) + 10.0
        for name in ("mlflow", "triton", "controller", "nginx"):
            # services() copied the environment it ran in: the token is the gateways' business only.
            self.services[name].env.pop("GATEWAY_ADMIN_TOKEN", None)
        self.services["triton"].env.update({"TRITON_EXIT_TIMEOUT_SECS": "1", "TRITON_STOP_TIMEOUT_S": "10"})
        self.services["controller"].env.update({"CONTROLLER_UNLOAD_GRACE_S": "5", **ROLLOUT})
        # As root, nginx runs its workers as www-data, and they buffer request bodies over 1 MiB in a
        # temp folder below its run folder: pytest's temp folders (0700) would hide it from them.
        self.edge_dir = Path(tempfile.mkdtemp(prefix="stack-edge-"))
        self.edge_dir.chmod(0o755)
        edge_command = self.services["nginx"].command
        edge_command[edge_command.index("--run-dir") + 1] = str(self.edge_dir)
        self.settings = RegistrySettings(
            tracking_uri=f"http://127.0.0.1:{self.ports.mlflow}",
            model_name=MODEL,
            experiment=EXPERIMENT,
            project_dir=self.project,
        )
        self._builds = 0

    # -- processes --------------------------------------------------------------------------------

    @property
    def edge_url(self) -> str:
        """nginx's public listener: the OpenAI API and /healthz only."""
        return f"http://127.0.0.1:{self.ports.edge}"

    @property
    def internal_url(self) -> str:
        """nginx's internal listener: every gateway path (status page, metrics, admin API)."""
        return f"http://127.0.0.1:{self.ports.edge_internal}"

    @property
    def gateway_urls(self) -> list[str]:
        return [f"http://127.0.0.1:{port}" for port in self.ports.gateways]

    def start(self, name: str) -> int:
        assert threading.current_thread() is threading.main_thread(), "start services from the main thread"
        return stack_module.start(self.services[name], self.run_dir)

    def start_all(self) -> None:
        (self.run_dir / "triton-repo").mkdir(parents=True, exist_ok=True)
        for name in self.services:
            self.start(name)

    def stop(self, name: str) -> None:
        stack_module.stop(self.run_dir, name)

    def down(self) -> None:
        stack_module.down(self.run_dir, list(self.services.values()))
        shutil.rmtree(self.edge_dir, ignore_errors=True)

    @property
    def folders(self) -> list[Path]:
        """Everything this stack writes: its run folder and nginx's."""
        return [self.run_dir, self.edge_dir]

    def pid(self, name: str) -> int | None:
        return stack_module.running_pid(self.run_dir, name)

    def log(self, name: str) -> Path:
        return self.run_dir / "logs" / f"{name}.log"

    def log_tail(self, name: str, lines: int = 30) -> str:
        try:
            text = self.log(name).read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    # -- registry ---------------------------------------------------------------------------------

    def store(self) -> Store:
        return Store(self.settings)

    def state(self) -> RolloutState:
        return read_state(self.store())

    def history(self, limit: int = 20) -> list[Event]:
        return events.history(self.store(), limit)

    def register(
        self, edit: Callable[[Path], None] | None = None, checkpoint: Path | None = None, **package_overrides: Any
    ) -> int:
        """Package a checkpoint (the tiny one unless given) as a new build and register it as the candidate."""
        self._builds += 1
        source = checkpoint if checkpoint is not None else self.checkpoint
        inputs = write_build(self.project / "builds", self._builds, source, edit, **package_overrides)
        return register_stage.register(inputs, self.settings, ACTOR).version

    # -- gateways ---------------------------------------------------------------------------------

    def admin(self, method: str, path: str, gateway: int = 0, **kwargs: Any) -> httpx.Response:
        headers = {**AUTH, "X-Actor": "stack-tests", **kwargs.pop("headers", {})}
        return httpx.request(method, f"{self.gateway_urls[gateway]}{path}", headers=headers, timeout=60, **kwargs)

    def gateway_states(self) -> list[dict[str, Any]]:
        return [self.admin("GET", "/admin/state", gateway=i).json() for i in range(len(self.gateway_urls))]

    def wait_serving(
        self, champion: int, canary: int | None = None, weight: int | None = None, timeout_s: float = 120
    ) -> None:
        """Until every gateway routes to exactly this split with each version READY in Triton."""

        def agreed() -> bool:
            with contextlib.suppress(httpx.HTTPError, ValueError):
                for state in self.gateway_states():
                    aliases = state["aliases"]
                    if aliases.get("champion") != champion or aliases.get("canary") != canary:
                        return False
                    if weight is not None and state["canary_weight"] != weight:
                        return False
                    wanted = {champion} | ({canary} if canary is not None else set())
                    if not wanted <= set(state["ready_versions"]):
                        return False
                return True
            return False

        what = f"the gateways to serve champion v{champion}, canary {canary} at {weight}%"
        try:
            wait_until(agreed, what, timeout_s)
        except pytest.fail.Exception:
            raise AssertionError(f"{what}; controller log:\n{self.log_tail('controller')}") from None

    def set_faults(self, rule: dict[str, Any] | None) -> None:
        """The same fault rule on every replica (a drill sets them on each), or none."""
        for i in range(len(self.gateway_urls)):
            response = (
                self.admin("DELETE", "/admin/faults", gateway=i)
                if rule is None
                else self.admin("POST", "/admin/faults", gateway=i, json=rule)
            )
            assert response.status_code == 200, response.text

    def clear_canary(self) -> None:
        """Back to champion only (abort a leftover canary), no faults; waits until the gateways agree."""
        with contextlib.suppress(httpx.HTTPError):
            self.set_faults(None)
        state = self.state()
        if state.paused:
            rollout.resume(self.store(), ACTOR)
        canary = state.version_of("canary")
        if canary is not None:
            rollout.abort(self.store(), ACTOR, canary, reason="test cleanup")
        champion = self.state().version_of("champion")
        assert champion is not None
        self.wait_serving(champion)


def _first_release(stack: Stack) -> None:
    stack.start_all()
    first = stack.register()
    rollout.promote_to_champion(stack.store(), ACTOR, first)
    stack.wait_serving(first)


_shared: list[Stack] = []


def shared_stack(config: pytest.Config, tmp_path_factory: pytest.TempPathFactory, checkpoint: Path) -> Stack:
    """One stack for the whole session (the fault and the security tests share it; starting one costs
    about a minute on 2 cores), stopped when the session ends."""
    if not _shared:
        stack = Stack(tmp_path_factory.mktemp("stack"), checkpoint)
        config.add_cleanup(stack.down)  # before starting: a failed start still stops what did start
        _first_release(stack)
        _shared.append(stack)
    return _shared[0]


def live_stacks() -> list[Stack]:
    return list(_shared)


def heal(stack: Stack) -> Stack:
    """Undo what an earlier test may have left: stopped services start again, the champion serves alone."""
    for name in stack.services:
        if stack.pid(name) is None:
            stack.stop(name)  # clears a stale pid file
            stack.start(name)
    stack.clear_canary()
    return stack


# -- processes --------------------------------------------------------------------------------------


def descendants(pid: int) -> list[int]:
    """``pid`` and every live process below it, whatever their process groups (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_bytes().rpartition(b")")[2].split()
        except OSError:
            continue
        if fields[0] != b"Z":
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found


def command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def kill_group(pid: int, sig: signal.Signals = signal.SIGKILL) -> None:
    """Signal process group ``pid`` (a service started in its own session, or a server's own group)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, sig)
