"""The audit trail: one finished MLflow run per registry action, in the ``<model>-rollout`` experiment.

In the MLflow UI that experiment's runs table reads as the history: run name (action and version),
User (who), Created (when), the ``rollout.*`` tags (state before and after, the reason) and one
param per figure the action was decided on (p-values, error rates, latencies).
"""

from __future__ import annotations

import getpass
import json
import math
import os
import re
from collections.abc import Mapping
from datetime import UTC, datetime

from mlflow.entities import Param, Run, RunStatus
from pydantic import BaseModel, ConfigDict, Field, field_validator

from registry import plans
from registry.errors import InvalidTransitionError
from registry.store import Store

_PREFIX = "rollout."
_DETAILS_TAG = "details"  # the figures as JSON, so they read back with their types
_STATE_KEY = "state"  # run tag rollout.state, as the registered model's tag of the same name
_DETAIL_KEY = re.compile(r"[A-Za-z0-9_.-]{1,100}")
_MAX_TEXT = 500
MAX_REASON = 2000

Details = dict[str, float | int | str]


class Actor(BaseModel):
    """Who moved the rollout: a CLI user, or a GitHub Actions run on someone's behalf."""

    model_config = ConfigDict(frozen=True)

    name: str
    run_url: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Actor:
        env = os.environ if env is None else env
        github_actor, run_id = env.get("GITHUB_ACTOR"), env.get("GITHUB_RUN_ID")
        if github_actor and run_id:
            server = env.get("GITHUB_SERVER_URL", "https://github.com")
            repo = env.get("GITHUB_REPOSITORY")
            url = f"{server}/{repo}/actions/runs/{run_id}" if repo else None
            return cls(name=f"{github_actor} (GitHub Actions run {run_id})", run_url=url)
        name = env.get("USER") or env.get("USERNAME")
        if not name:
            try:
                name = getpass.getuser()
            except (KeyError, OSError):
                name = "unknown"
        return cls(name=name)


class Event(BaseModel):
    """One recorded action: what moved, from which state to which, when and by whom."""

    model_config = ConfigDict(frozen=True)

    action: str
    version: int | None
    actor: str
    run_url: str | None = None
    at: datetime
    before: str
    after: str
    generation: int
    summary: str
    reason: str | None = Field(default=None, max_length=MAX_REASON)
    details: Details = Field(default_factory=dict)
    run_id: str | None = None
    #: The ``rollout.state`` tag the action wrote (what serves after it), so the history can restore it.
    state: str | None = None

    @field_validator("details")
    @classmethod
    def _plain_keys_short_values(cls, value: Details) -> Details:
        for problem in detail_problems(value):
            raise ValueError(problem)
        return value

    def figures(self) -> str:
        """The details on one line: ``p_value=0.0123 error_rate=0.002 reason_code=latency``."""
        return " ".join(f"{key}={_compact(value)}" for key, value in sorted(self.details.items()))

    def tags(self) -> dict[str, str]:
        fields = {
            "action": self.action,
            "version": "" if self.version is None else str(self.version),
            "actor": self.actor,
            "run_url": self.run_url or "",
            "at": self.at.isoformat(),
            "before": self.before,
            "after": self.after,
            "generation": str(self.generation),
            "summary": self.summary,
            "reason": self.reason or "",
            _DETAILS_TAG: json.dumps(self.details, sort_keys=True) if self.details else "",
            _STATE_KEY: self.state or "",
        }
        return {_PREFIX + key: value for key, value in fields.items()}

    @classmethod
    def from_run(cls, run: Run) -> Event:
        tags = {k.removeprefix(_PREFIX): v for k, v in run.data.tags.items() if k.startswith(_PREFIX)}
        return cls(
            action=tags.get("action", "?"),
            version=int(tags["version"]) if tags.get("version") else None,
            actor=tags.get("actor", "?"),
            run_url=tags.get("run_url") or None,
            at=datetime.fromisoformat(tags["at"]) if tags.get("at") else _from_ms(run.info.start_time),
            before=tags.get("before", ""),
            after=tags.get("after", ""),
            generation=int(tags.get("generation", "0")),
            summary=tags.get("summary", ""),
            reason=tags.get("reason") or None,
            details=_details(tags.get(_DETAILS_TAG)),
            run_id=run.info.run_id,
            state=tags.get(_STATE_KEY) or None,
        )


def detail_problems(details: Mapping[str, object]) -> list[str]:
    """What is wrong with an event's figures (empty when they can be recorded as run params)."""
    problems = []
    for key, figure in details.items():
        if not _DETAIL_KEY.fullmatch(key):
            problems.append(f"detail key {key!r}: use 1-100 letters, digits, '_', '.' or '-'")
        if isinstance(figure, bool) or not isinstance(figure, int | float | str):
            problems.append(f"detail {key!r}: {type(figure).__name__} is not a number or text")
        elif isinstance(figure, str) and len(figure) > _MAX_TEXT:
            problems.append(f"detail {key!r}: text longer than {_MAX_TEXT} characters")
    return problems


def check_annotations(reason: str | None, details: Mapping[str, object]) -> None:
    """Refuse (InvalidTransitionError) a reason or figures that could not be recorded, before anything moves."""
    problems = detail_problems(details)
    if reason is not None and len(reason) > MAX_REASON:
        problems.append(f"reason: {len(reason)} characters, at most {MAX_REASON}")
    if problems:
        raise InvalidTransitionError("; ".join(problems))


def _details(text: str | None) -> Details:
    try:
        loaded = json.loads(text) if text else {}
    except json.JSONDecodeError:
        return {}
    if not isinstance(loaded, dict):
        return {}
    return {str(k): v for k, v in loaded.items() if isinstance(v, int | float | str) and not isinstance(v, bool)}


def _compact(value: float | int | str) -> str:
    if isinstance(value, float) and math.isfinite(value):
        return format(value, ".4g")
    return str(value)


def now() -> datetime:
    return datetime.now(UTC)


def record(store: Store, event: Event) -> Event:
    """Write ``event`` as a finished run; return it with its run id."""
    experiment_id = store.experiment_id(store.settings.events_experiment)
    name = event.action if event.version is None else f"{event.action} v{event.version}"
    run = store.client.create_run(
        experiment_id,
        start_time=int(event.at.timestamp() * 1000),
        run_name=name,
        tags={
            **event.tags(),
            "mlflow.user": event.actor,
            "mlflow.source.name": "python -m registry",
            "mlflow.note.content": _note(event),
        },
    )
    if event.details:
        params = [Param(key, str(value)) for key, value in sorted(event.details.items())]
        for start in range(0, len(params), 100):  # log_batch takes at most 100 params a call
            store.client.log_batch(run.info.run_id, params=params[start : start + 100])
    store.client.set_terminated(run.info.run_id, RunStatus.to_string(RunStatus.FINISHED))
    return event.model_copy(update={"run_id": run.info.run_id})


def _note(event: Event) -> str:
    lines = [event.summary]
    if event.reason:
        lines.append(f"reason: {event.reason}")
    if event.details:
        lines.append(f"figures: {event.figures()}")
    return "\n\n".join([*lines, f"before: {event.before}", f"after: {event.after}"])


def history(store: Store, limit: int = 50) -> list[Event]:
    """The newest ``limit`` events, newest first."""
    found = store.client.get_experiment_by_name(store.settings.events_experiment)
    if found is None:
        return []
    runs = store.client.search_runs([found.experiment_id], order_by=["attributes.start_time DESC"], max_results=limit)
    events = [Event.from_run(run) for run in runs]
    return sorted(events, key=lambda e: (e.at, e.generation), reverse=True)


def recorded_state(store: Store) -> Event | None:
    """The newest event that recorded the ``rollout.state`` it wrote (None: no such event yet)."""
    found = store.client.get_experiment_by_name(store.settings.events_experiment)
    if found is None:
        return None
    runs = store.client.search_runs(
        [found.experiment_id],
        filter_string=f"tags.`{_PREFIX}{_STATE_KEY}` LIKE '{{%'",
        order_by=["attributes.start_time DESC"],
        max_results=5,  # events recorded within one millisecond: the generation orders them
    )
    recorded = [Event.from_run(run) for run in runs]
    return max(recorded, key=lambda e: e.generation, default=None)


def validated(store: Store, version: int) -> bool:
    """True when ``version`` ever had the ``candidate`` alias: the register stage's event, which it
    records only for a build that passed validation."""
    found = store.client.get_experiment_by_name(store.settings.events_experiment)
    if found is None:
        return False
    runs = store.client.search_runs(
        [found.experiment_id],
        filter_string=f"tags.`{_PREFIX}action` = '{plans.REGISTER}' and tags.`{_PREFIX}version` = '{int(version)}'",
        max_results=1,
    )
    return bool(runs)


def _from_ms(ms: int | None) -> datetime:
    return datetime.fromtimestamp((ms or 0) / 1000, tz=UTC)
