"""The controller's verdicts on a real stack (MLflow, Triton, two gateways, nginx), with real bad builds.

Each canary is a build Triton really serves: an identical one with 1% of requests failing on both
versions (promoted, every time), one with perturbed weights that answers the golden questions worse
(rolled back for its answers, though fast and error-free), one whose backend fails a share of its
requests inside Triton (rolled back for errors), and the bnb-int8 build, slower on a CPU (rolled back
for latency). Clients keep asking through nginx the whole time and never see an error: a failed
canary attempt is answered by the champion.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from core.quantization import QuantizeParams, quantize_checkpoint
from registry import rollout
from registry.events import Event
from serving.rollout.analysis import LABELS
from serving.telemetry import HISTOGRAMS
from tests.stack_fixture import ACTOR, Answer, Load, Stack, failures, summary

pytestmark = [pytest.mark.slow, pytest.mark.triton, pytest.mark.mlflow]

FLAKY = Path(__file__).with_name("flaky_model.py")


def degraded_checkpoint(source: Path, out: Path, noise: float = 1.0) -> Path:
    """A copy of ``source`` with Gaussian noise (``noise`` x each matrix's spread) on the vision tower.

    The tiny model then still answers every question, fast and well-formed, but miscounts shapes:
    about a quarter of the golden set goes wrong (in-process: 75% right against 99%).
    """
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(source, out)
    generator = torch.Generator().manual_seed(0)
    tensors = {}
    for name, tensor in load_file(source / "model.safetensors").items():
        if name.startswith("model.visual.") and tensor.ndim == 2:
            tensor = tensor + noise * tensor.std() * torch.randn(tensor.shape, generator=generator)
        tensors[name] = tensor.contiguous()
    save_file(tensors, out / "model.safetensors", metadata={"format": "pt"})
    return out


def flaky(percent: float):  # type: ignore[no-untyped-def]
    """A package edit: the version's model.py becomes the test-only wrapper that fails ``percent``% inside Triton."""

    def edit(model_dir: Path) -> None:
        version = next(p for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())
        (version / "model.py").rename(version / "real_model.py")
        shutil.copy2(FLAKY, version / "model.py")
        (version / "fail_percent.txt").write_text(f"{percent:g}\n")

    return edit


def verdict(stack: Stack, canary: int, timeout_s: float) -> Event:
    """Wait for the controller to promote or roll back ``canary``; its event."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for event in stack.history(10):
            if event.version == canary and event.action in ("promote-champion", "rollback-canary"):
                return event
        time.sleep(1)
    pytest.fail(
        f"no verdict on v{canary} within {timeout_s:.0f} s: {stack.state().describe()}; controller log:\n"
        f"{stack.log_tail('controller', 15)}"
    )


def run_canary(stack: Stack, canary: int, timeout_s: float, faults: list[dict[str, object]] | None = None) -> Event:
    """Promote ``canary`` under load until its verdict; no client sees an error the champion did not make."""
    stack.clear_canary()  # nothing left over from an earlier test
    champion = stack.state().version_of("champion")
    load = Load(stack.edge_url, workers=4, pause_s=0.0).start()
    try:
        for rule in faults or []:
            stack.set_faults(rule)
        started = time.monotonic()
        rollout.promote_to_canary(stack.store(), ACTOR, canary)  # at 0%: the controller takes it from here
        event = verdict(stack, canary, timeout_s)
        seen = time.monotonic()
    finally:
        answers = load.stop()
        stack.set_faults(None)
    took = seen - started
    print(f"\nv{canary}: {event.action} {took:.0f} s after promotion to canary: {event.reason}\n{summary(answers)}")

    def champions_own(answer: Answer) -> bool:
        # A champion's injected errors reach its clients (nothing answers for it): the old champion's, and
        # the canary's once promoted (the verdict is seen within a poll of it). A canary's never do.
        if "injected fault" not in answer.detail:
            return False
        return answer.version == str(champion) or (answer.version == str(canary) and answer.started >= seen - 3)

    assert not [a for a in failures(answers) if not champions_own(a)], summary(failures(answers))
    return event


def test_an_identical_build_with_one_percent_errors_on_both_is_promoted_every_time(verdict_stack: Stack) -> None:
    for run in range(3):
        champion = verdict_stack.state().version_of("champion")
        assert champion is not None
        canary = verdict_stack.register()
        faults = [{"version": v, "error_percent": 1} for v in (champion, canary)]
        event = run_canary(verdict_stack, canary, 600, faults)
        assert event.action == "promote-champion", f"run {run + 1}: identical build rolled back: {event.reason}"
        assert event.details["canary_error_rate"] > 0  # the injected errors were there, on both
        assert "healthy at every step up to 100%" in (event.reason or "")


def test_a_build_with_worse_answers_is_rolled_back_for_them(verdict_stack: Stack, tmp_path: Path) -> None:
    worse = verdict_stack.register(checkpoint=degraded_checkpoint(verdict_stack.checkpoint, tmp_path / "worse"))
    event = run_canary(verdict_stack, worse, 300)
    assert event.action == "rollback-canary" and "golden probes" in (event.reason or ""), event.reason
    assert event.details["canary_probe_accuracy"] < event.details["champion_probe_accuracy"] - 0.05
    assert event.details["canary_error_rate"] == 0  # fast and error-free: only its answers gave it away


def test_a_build_failing_requests_inside_triton_is_rolled_back_for_errors(verdict_stack: Stack) -> None:
    broken = verdict_stack.register(edit=flaky(10))
    event = run_canary(verdict_stack, broken, 300)
    assert event.action == "rollback-canary" and "error rate" in (event.reason or ""), event.reason
    assert event.details["canary_error_rate"] > 0.03


def test_the_slower_int8_build_is_rolled_back_for_latency(verdict_stack: Stack, tmp_path: Path) -> None:
    int8 = tmp_path / "int8"
    quantize_checkpoint(
        verdict_stack.checkpoint, int8, QuantizeParams(method="bnb-int8", skip_modules=["model.visual", "lm_head"]),
        "cpu", "float32",
    )  # fmt: skip
    slower = verdict_stack.register(checkpoint=int8)
    event = run_canary(verdict_stack, slower, 300)
    # Slower shows as end-to-end latency, time to first token or time per output token: whichever the
    # evidence reaches first on this run's traffic (CI saw TTFT p50 x1.38 decide it, 25 s in).
    timings = tuple(f"canary {LABELS[name]} " for name in HISTOGRAMS)
    assert event.action == "rollback-canary" and (event.reason or "").startswith(timings), event.reason
    ratios = [v for k, v in event.details.items() if k.endswith("_ratio") and isinstance(v, int | float) and v == v]
    assert max(ratios) > 1.1
