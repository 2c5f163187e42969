"""Two gateway replicas and one controller sharing a registry on PostgreSQL, as on several machines.

Real processes, as ``make up`` starts them (``tests.stack_fixture``): MLflow whose backend store is a
database of a throwaway PostgreSQL cluster, Triton with the tiny model, the rollout controller and two
gateways (no nginx: each replica gets its own clients, so each one's answers are seen). A candidate
promoted to canary is stepped up and promoted by the controller while clients keep asking both
replicas; after every move both replicas route by the same champion, canary and weight as the registry,
and no client sees an error.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg2
import pytest

from registry import events, rollout
from registry.state import RolloutState
from tests.registry import postgres
from tests.registry.conftest import postgres_cluster
from tests.stack_fixture import ACTOR, MODEL, ROLLOUT, Load, Stack, failures, summary

pytestmark = [pytest.mark.slow, pytest.mark.triton, pytest.mark.mlflow]

#: Short dwells so three steps and the promotion fit in about a minute of traffic.
STEPS = [25, 50, 100]
RULES = {**ROLLOUT, "ROLLOUT_STEPS": ",".join(map(str, STEPS)), "ROLLOUT_MIN_STEP_S": "4"}
SERVICES = ("mlflow", "triton", "controller", "gateway-1", "gateway-2")

#: (champion, canary, weight) as the registry or a replica sees it.
Split = tuple[int | None, int | None, int]


@pytest.fixture(scope="module")
def stack(
    pytestconfig: pytest.Config, tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path
) -> Iterator[Stack]:
    database = postgres_cluster(pytestconfig).create_database("shared_registry")
    running = Stack(tmp_path_factory.mktemp("shared-registry"), tiny_checkpoint)
    # services() puts MLflow on a scratch sqlite file; several machines share a database instead.
    running.services["mlflow"].env["REGISTRY_BACKEND_STORE_URI"] = database
    for name in ("gateway-1", "gateway-2"):
        # The fault tests' 2 s cut-off catches hung canaries; here nothing hangs, and on a busy 2-core
        # machine a champion answer can take longer while Triton loads the canary.
        running.services[name].env["GATEWAY_UPSTREAM_TIMEOUT_S"] = "30"
    running.services["controller"].env.update(RULES)
    (running.run_dir / "triton-repo").mkdir(parents=True, exist_ok=True)
    try:
        for name in SERVICES:
            running.start(name)
        yield running
    finally:
        running.down()


def _split(aliases: dict[str, int], weight: int) -> Split:
    return aliases.get("champion"), aliases.get("canary"), weight


def _registry_split(state: RolloutState) -> Split:
    return _split(dict(state.aliases), state.canary_weight)


def _replica_views(stack: Stack) -> list[tuple[int | None, Split]]:
    """Each replica's (generation, split); (None, ...) for one that did not answer."""
    views: list[tuple[int | None, Split]] = []
    for state in stack.gateway_states():
        views.append((state["generation"], _split(state["aliases"], state["canary_weight"])))
    return views


def test_two_replicas_and_a_controller_on_postgresql_roll_a_canary_out_together(stack: Stack) -> None:
    champion = stack.register()
    rollout.promote_to_champion(stack.store(), ACTOR, champion)
    stack.wait_serving(champion)
    canary = stack.register()

    loads = [Load(url, workers=2).start() for url in stack.gateway_urls]
    registry_seen: dict[int, Split] = {}
    replica_seen: list[dict[int, set[Split]]] = [{}, {}]
    try:
        start = rollout.promote_to_canary(stack.store(), ACTOR, canary)  # at 0%: the controller takes it from here
        deadline = time.monotonic() + 150
        while True:
            state = stack.state()
            registry_seen.setdefault(state.generation, _registry_split(state))
            with contextlib.suppress(httpx.HTTPError, ValueError):
                for seen, (generation, split) in zip(replica_seen, _replica_views(stack), strict=True):
                    if generation is not None:
                        seen.setdefault(generation, set()).add(split)
            # The generation moves last in an action (MLflow has no transactions): a read between an action's
            # alias moves and its new generation is torn, so each generation keeps its first reading.
            promoted = registry_seen[state.generation] == (canary, None, 0)
            if promoted and all(state.generation in seen for seen in replica_seen):
                break
            if time.monotonic() > deadline:
                pytest.fail(
                    f"v{canary} was not promoted within 150 s: registry {state.describe()}; "
                    f"controller log:\n{stack.log_tail('controller')}"
                )
            time.sleep(0.1)
        time.sleep(1)  # a few answers from the new champion alone
    finally:
        answers = [load.stop() for load in loads]

    moves = {g: split for g, split in registry_seen.items() if g >= start.generation}
    print(
        f"\nmoves (generation: champion, canary, weight): {moves}; "
        + "; ".join(f"gateway-{i}: {summary(a)}" for i, a in enumerate(answers, start=1))
    )
    # The controller's moves, in order: loaded at 0%, each step, then the promotion.
    assert [split[2] for _, split in sorted(moves.items())] == [0, *STEPS, 0], moves
    assert moves[max(moves)] == (canary, None, 0)
    for replica, seen in enumerate(replica_seen, start=1):
        for generation, split in moves.items():
            # A replica polls every 0.25 s and each move stands for seconds: it served every one of them,
            # with exactly the registry's split.
            assert seen.get(generation) == {split}, f"gateway-{replica} at generation {generation}: {seen}"

    history = [e.action for e in reversed(events.history(stack.store(), 20)) if e.generation > start.generation]
    assert history == ["set-weight", "step", "step", "promote-champion"], history
    for replica, answered in enumerate(answers, start=1):
        assert failures(answered) == [], f"gateway-{replica}: {summary(answered)}"
        # Each replica really split its own traffic between the two versions.
        versions = {a.version for a in answered}
        assert versions == {str(champion), str(canary)}, f"gateway-{replica}: {summary(answered)}"

    # The registry the replicas shared is the PostgreSQL database, not a sqlite file beside it.
    assert not (stack.store_dir / "mlflow.db").exists()
    database = stack.services["mlflow"].env["REGISTRY_BACKEND_STORE_URI"]
    libpq_uri = database.replace(f"postgresql+{postgres.DRIVER}://", "postgresql://")
    with contextlib.closing(psycopg2.connect(libpq_uri)) as connection, connection.cursor() as cursor:
        cursor.execute("SELECT name FROM registered_models WHERE name = %s", (MODEL,))
        assert cursor.fetchall() == [(MODEL,)]
