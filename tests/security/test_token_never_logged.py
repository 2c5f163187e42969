"""The admin token never reaches a file: real services run with a known token, every admin endpoint is
called (with it, and with wrong ones, successes and failures alike), and then everything the stack
wrote is searched for it: each service's log, nginx's access and error logs, Triton's log, MLflow's
store and artifacts."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.security.leaks import files_under, scan
from tests.stack_fixture import TOKEN, Stack

pytestmark = [pytest.mark.slow, pytest.mark.triton, pytest.mark.mlflow]

#: One character off: a wrong token may well be a real token of another environment.
NEAR_MISS = TOKEN[:-1] + ("x" if TOKEN[-1] != "x" else "y")

CALLS: list[tuple[str, str, dict[str, object] | None]] = [
    ("GET", "/admin/state", None),
    ("GET", "/admin/faults", None),
    ("POST", "/admin/faults", {"version": 1, "delay_ms": 0}),
    ("POST", "/admin/faults", {"version": 0}),  # invalid: a 400
    ("POST", "/admin/weight", {"weight": 10}),  # no canary: a 409
    ("POST", "/admin/promote", {"to": "canary"}),  # no candidate: a 409
    ("POST", "/admin/step", {}),
    ("POST", "/admin/resume", None),  # not paused: a 409
    ("POST", "/admin/abort", {"reason": "nothing to abort"}),
    ("DELETE", "/admin/faults", None),
]


def exercise(base: str) -> list[int]:
    statuses = []
    headers = [
        {"Authorization": f"Bearer {TOKEN}"},
        {"Authorization": f"Bearer {NEAR_MISS}"},
        {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": TOKEN},
    ]
    with httpx.Client(base_url=base, timeout=60) as client:
        for method, path, body in CALLS:
            for header in headers:
                response = client.request(method, path, json=body, headers={**header, "X-Actor": "leak-test"})
                statuses.append(response.status_code)
                assert TOKEN not in response.text and NEAR_MISS not in response.text
        # A token in the query string is the client's mistake; writing it to the access log would be
        # ours (nginx logs $uri, without the arguments). A path is logged as it is: never put one there.
        statuses.append(client.get(f"/admin/state?token={TOKEN}").status_code)
    return statuses


def test_no_file_the_stack_wrote_holds_the_admin_token(stack: Stack) -> None:
    statuses = []
    for base in [stack.internal_url, *stack.gateway_urls]:
        statuses += exercise(base)
    time.sleep(1)  # nginx writes its access log line after answering
    assert {200, 400, 401, 409} <= set(statuses), sorted(set(statuses))

    written = {path.relative_to(stack.run_dir).as_posix() for path in files_under([stack.run_dir])}
    expected = {
        "logs/mlflow.log", "logs/triton.log", "logs/controller.log", "logs/gateway-1.log", "logs/gateway-2.log",
        "logs/nginx.log", "triton/tritonserver.log", "mlflow/mlflow.db",
    }  # fmt: skip
    assert expected <= written, sorted(expected - written)
    assert {"access.log", "error.log"} <= {path.name for path in files_under([stack.edge_dir])}
    access = (stack.edge_dir / "access.log").read_text()
    assert access.count('"uri":"/admin/state"') >= 5  # the requests above were logged, just not the token

    leaks = scan(stack.folders, [TOKEN, NEAR_MISS])
    assert leaks == {}, f"the admin token is in: {sorted(map(str, leaks))}"
