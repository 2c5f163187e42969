"""The audit trail: one finished MLflow run per registry action, in the ``<model>-rollout`` experiment.

In the MLflow UI that experiment's runs table reads as the history: run name (action and version),
User (who), Created (when), and the ``rollout.*`` tags (state before and after).
"""

from __future__ import annotations

import getpass
import os
from collections.abc import Mapping
from datetime import UTC, datetime

from mlflow.entities import Run, RunStatus
from pydantic import BaseModel, ConfigDict

from registry.store import Store

_PREFIX = "rollout."


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
    run_id: str | None = None

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
            run_id=run.info.run_id,
        )


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
            "mlflow.note.content": f"{event.summary}\n\nbefore: {event.before}\n\nafter: {event.after}",
        },
    )
    store.client.set_terminated(run.info.run_id, RunStatus.to_string(RunStatus.FINISHED))
    return event.model_copy(update={"run_id": run.info.run_id})


def history(store: Store, limit: int = 50) -> list[Event]:
    """The newest ``limit`` events, newest first."""
    found = store.client.get_experiment_by_name(store.settings.events_experiment)
    if found is None:
        return []
    runs = store.client.search_runs([found.experiment_id], order_by=["attributes.start_time DESC"], max_results=limit)
    events = [Event.from_run(run) for run in runs]
    return sorted(events, key=lambda e: (e.at, e.generation), reverse=True)


def _from_ms(ms: int | None) -> datetime:
    return datetime.fromtimestamp((ms or 0) / 1000, tz=UTC)
