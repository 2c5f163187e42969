"""A stack of its own for the verdict tests: the shipped rollout policy (faster dwells), golden probes on."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipelines.golden import ROWS_FILE, generate_rows
from registry import rollout
from tests.stack_fixture import ACTOR, Stack

#: The shipped policy (core/rollout_policy.py) except: 10 s per step instead of 30, and three probe
#: pairs a second instead of one, so a whole rollout fits in a couple of minutes of test time.
POLICY = {"ROLLOUT_MIN_STEP_S": "10", "ROLLOUT_PROBE_RPS": "3"}


@pytest.fixture(scope="package")
def verdict_stack(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path) -> Iterator[Stack]:
    run_dir = tmp_path_factory.mktemp("verdicts")
    golden = run_dir / "golden"
    rows = generate_rows(seed=1729, size=300, out=golden)  # the golden stage's own set
    (golden / ROWS_FILE).write_text("".join(json.dumps(row) + "\n" for row in rows))
    stack = Stack(run_dir / "stack", tiny_checkpoint)
    controller = stack.services["controller"].env
    for key in [k for k in controller if k.startswith("ROLLOUT_")]:
        del controller[key]  # the fault tests' relaxed policy: not here
    controller.update({**POLICY, "CONTROLLER_GOLDEN_PATH": str(golden)})
    for name in ("gateway-1", "gateway-2"):
        # One timeout for canary and champion, long enough for any answer of the tiny model under load.
        stack.services[name].env["GATEWAY_UPSTREAM_TIMEOUT_S"] = "30"
    try:
        stack.start_all()
        first = stack.register()
        rollout.promote_to_champion(stack.store(), ACTOR, first)
        stack.wait_serving(first)
        yield stack
    finally:
        stack.down()
