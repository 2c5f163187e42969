"""Fakes that implement the gateway's real interfaces: ``RegistryPort`` and ``Upstream``.

The fake registry applies the registry's own pure plans (``registry.plans``) to an in-memory
state, so its transitions and refusals are the real ones; only MLflow is missing. The fake
upstream streams like the tiny model's contract and can be told to fail per Triton model, before its
first piece or after some.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from core.names import served_model_name
from registry import plans
from registry.errors import InvalidTransitionError
from registry.events import Actor, Event
from registry.state import RolloutState
from serving.gateway.errors import (
    GatewayError,
    RegistryConflictError,
    RegistryUnavailableError,
    UpstreamUnavailableError,
)
from serving.gateway.registry_client import Action
from serving.gateway.upstream import Delta, Sampling

MODEL = "qwen3-vl"
STEPS = (5, 25, 50, 100)


class FakeRegistry:
    """An in-memory registered model; ``down`` makes every call fail as an unreachable MLflow would."""

    def __init__(self, aliases: dict[str, int] | None = None, weight: int = 0, model: str = MODEL) -> None:
        self._model = model
        self.state: RolloutState | None = RolloutState(
            model=model, aliases=dict(aliases or {}), canary_weight=weight, generation=1
        )
        self.events: list[Event] = []
        self.down = False
        self.reads = 0
        self.controller_report: dict[str, Any] | None = None

    @property
    def model(self) -> str:
        return self._model

    def read_state(self) -> RolloutState | None:
        self.reads += 1
        self._check()
        return self.state

    def history(self, limit: int) -> list[Event]:
        self._check()
        return list(reversed(self.events))[:limit]

    def controller(self) -> dict[str, Any] | None:
        self._check()
        return self.controller_report

    def act(self, action: Action, actor: Actor) -> Event:
        self._check()
        assert self.state is not None
        try:
            plan = self._plan(action, self.state)
        except InvalidTransitionError as exc:
            raise RegistryConflictError(str(exc)) from exc
        return self.apply(plan, actor.name, action.reason)

    def set(self, aliases: dict[str, int], weight: int, paused: bool = False) -> None:
        """Move the state as another replica's admin call would (the generation moves too)."""
        generation = (self.state.generation if self.state else 0) + 1
        self.state = RolloutState(
            model=self._model, aliases=aliases, canary_weight=weight, generation=generation, paused=paused
        )

    def apply(self, plan: plans.Plan, actor: str, reason: str | None = None) -> Event:
        assert self.state is not None
        before = self.state
        aliases, weight, paused = dict(before.aliases), before.canary_weight, before.paused
        for op in plan.ops:
            match op:
                case plans.SetAlias(alias, version):
                    aliases[alias] = version
                case plans.DropAlias(alias):
                    aliases.pop(alias, None)
                case plans.SetWeight(percent):
                    weight = percent
                case plans.SetPaused(value):
                    paused = value
        self.set(aliases, weight, paused)
        after = self.state
        event = Event(
            action=plan.action,
            version=plan.version,
            actor=actor,
            at=datetime.now(UTC),
            before=before.describe(),
            after=after.describe(),
            generation=after.generation,
            summary=plan.summary,
            reason=reason,
        )
        self.events.append(event)
        return event

    def _plan(self, action: Action, state: RolloutState) -> plans.Plan:
        match action.name:
            case "promote-canary":
                return plans.promote_to_canary(state, action.version, action.weight or 0)
            case "promote-champion":
                return plans.promote_to_champion(state, action.version)
            case "weight":
                return plans.set_weight(state, action.weight or 0, action.version)
            case "step":
                return plans.step(state, action.steps or STEPS, action.version)
            case "pause":
                return plans.pause(state)
            case "resume":
                return plans.resume(state)
            case "abort":
                return plans.abort(state, action.version, "test")
        raise AssertionError(action.name)

    def _check(self) -> None:
        if self.down:
            raise RegistryUnavailableError("MLflow did not answer: connection refused (fake)")


Behaviour = Callable[[str, bytes], GatewayError | None]


@dataclass
class Call:
    model: str
    messages: bytes
    sampling: Sampling

    @property
    def max_tokens(self) -> int | None:
        return self.sampling.max_tokens

    @property
    def temperature(self) -> float | None:
        return self.sampling.temperature


@dataclass
class FakeUpstream:
    """Triton in miniature: ``ready`` models stream ``"<text> from <model>"`` word by word (a word a token);
    ``fail[model]`` raises before the first piece, ``fail_after[model] = (n, error)`` after ``n`` pieces;
    ``delay_s`` waits before the first piece, ``piece_delay_s`` before each later one. ``cancelled``
    counts streams closed before their end (what Triton sees as a cancelled request)."""

    ready: set[str] = field(default_factory=set)
    parameters: dict[str, dict[str, str]] = field(default_factory=dict)
    fail: dict[str, GatewayError] = field(default_factory=dict)
    fail_after: dict[str, tuple[int, GatewayError]] = field(default_factory=dict)
    delay_s: dict[str, float] = field(default_factory=dict)
    piece_delay_s: dict[str, float] = field(default_factory=dict)
    answer: Callable[[str, bytes], str] = lambda model, messages: f"red from {model}"
    down: bool = False
    calls: list[Call] = field(default_factory=list)
    started: bool = False
    cancelled: list[str] = field(default_factory=list)
    finished: list[str] = field(default_factory=list)

    @classmethod
    def serving(cls, *versions: int, model: str = MODEL, max_new_tokens: int = 8) -> FakeUpstream:
        names = {served_model_name(model, version) for version in versions}
        parameters = {
            name: {
                "MAX_NEW_TOKENS": str(max_new_tokens),
                "MAX_IMAGES": "4",
                "MAX_IMAGE_PIXELS": str(1 << 20),
                "TEMPERATURE": "0.0",
                "TOP_P": "1.0",
            }
            for name in names
        }
        return cls(ready=names, parameters=parameters)

    async def start(self) -> None:
        self.started = True

    async def close(self) -> None:
        self.started = False

    async def stream(self, model: str, messages: bytes, sampling: Sampling) -> AsyncGenerator[Delta, None]:
        self.calls.append(Call(model, messages, sampling))
        outcome = "cancelled"
        try:
            if self.down:
                outcome = "failed"
                raise UpstreamUnavailableError("Triton at http://127.0.0.1:1 is unreachable (fake)")
            if model in self.delay_s:
                await asyncio.sleep(self.delay_s[model])
            if model in self.fail:
                outcome = "failed"
                raise self.fail[model]
            if model not in self.ready:
                from serving.gateway.errors import UpstreamNotReadyError

                outcome = "failed"
                raise UpstreamNotReadyError(f"Request for unknown model: '{model}' is not found")
            version = model.rsplit("-v", 1)[1]
            words = self.answer(model, messages).split(" ")
            pieces = [words[0], *(" " + word for word in words[1:])]
            cap = sampling.max_tokens if sampling.max_tokens is not None else 8
            kept = pieces[:cap]
            reason = "length" if len(pieces) > cap else "stop"
            for index, piece in enumerate(kept):
                if index and model in self.piece_delay_s:
                    await asyncio.sleep(self.piece_delay_s[model])
                broken = self.fail_after.get(model)
                if broken is not None and index == broken[0]:
                    outcome = "failed"
                    raise broken[1]
                last = index == len(kept) - 1
                logprobs = [{"token": piece, "logprob": -0.5, "bytes": list(piece.encode()), "top_logprobs": []}]
                if last:
                    outcome = "finished"
                yield Delta(
                    piece, 12, index + 1, version, reason if last else "", logprobs if sampling.logprobs else None
                )
        finally:
            if outcome == "finished":
                self.finished.append(model)
            elif outcome == "cancelled":
                self.cancelled.append(model)

    async def ready_models(self) -> set[str]:
        if self.down:
            raise UpstreamUnavailableError("Triton at http://127.0.0.1:1 is unreachable (fake)")
        return set(self.ready)

    async def model_parameters(self, model: str) -> dict[str, str]:
        return dict(self.parameters.get(model, {}))

    def calls_to(self, model: str) -> int:
        return sum(1 for call in self.calls if call.model == model)
