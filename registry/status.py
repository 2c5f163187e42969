"""What ``python -m registry status`` reports: each alias with the lineage a person checks first.

The aliases are what serves (``rollout.state``, what the gateways route by); an alias or weight that
MLflow shows differently, changed outside the project's actions and not settled yet, is listed
apart, and the last event says how the latest one was settled and why.
"""

from __future__ import annotations

from pydantic import BaseModel

from registry.state import ALIASES, RolloutState, VersionInfo, read_state, resolve
from registry.store import Store


class Lineage(BaseModel):
    version: int
    run_id: str | None
    commit: str | None
    dirty: bool | None
    dvc_lock_sha256: str | None
    params_sha256: str | None
    quantization: str | None
    accuracy: float | None
    drop: float | None
    size_bytes: int | None
    triton_model: str | None
    served_digest: str | None
    source: str

    @classmethod
    def of(cls, info: VersionInfo) -> Lineage:
        return cls(
            version=info.version,
            run_id=info.run_id,
            commit=info.commit,
            dirty=info.dirty,
            dvc_lock_sha256=info.dvc_lock_sha256,
            params_sha256=info.params_sha256,
            quantization=info.quantization,
            accuracy=info.accuracy,
            drop=info.drop,
            size_bytes=info.size_bytes,
            triton_model=info.triton_model,
            served_digest=info.served_digest,
            source=info.source,
        )


class Status(BaseModel):
    """The machine-readable answer of ``status --json``."""

    registered_model: str
    tracking_uri: str
    generation: int
    canary_weight: int
    paused: bool
    champion: Lineage | None
    canary: Lineage | None
    candidate: Lineage | None
    previous_champion: Lineage | None
    last_event: str | None
    #: What MLflow shows differently from what serves (an outside change the controller has not settled).
    outside_changes: list[str] = []
    #: Why ``rollout.state`` cannot be read (the next action or controller tick restores it).
    state_problem: str | None = None

    def by_alias(self) -> dict[str, Lineage | None]:
        return {
            "champion": self.champion,
            "canary": self.canary,
            "candidate": self.candidate,
            "previous-champion": self.previous_champion,
        }


def read_status(store: Store) -> Status:
    state: RolloutState = read_state(store)
    found = {alias: resolve(store, alias, state) for alias in ALIASES}
    lineage = {alias: Lineage.of(info) if info is not None else None for alias, info in found.items()}
    return Status(
        registered_model=store.model,
        tracking_uri=store.where,
        generation=state.generation,
        canary_weight=state.canary_weight,
        paused=state.paused,
        champion=lineage["champion"],
        canary=lineage["canary"],
        candidate=lineage["candidate"],
        previous_champion=lineage["previous-champion"],
        last_event=state.last_event,
        outside_changes=[change.describe() for change in state.outside_changes()],
        state_problem=state.damaged,
    )
