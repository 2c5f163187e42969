"""The admin API answers only its bearer token: 401 otherwise, on every route, direct and through nginx's
internal listener, and a refused request changes nothing; nginx's public listener does not serve it at
all. The comparison runs in constant time."""

from __future__ import annotations

import ast
from pathlib import Path

import httpx
import pytest

from serving.gateway import admin
from tests.stack_fixture import TOKEN, Stack

pytestmark = [pytest.mark.slow, pytest.mark.triton, pytest.mark.mlflow]

ROUTES: list[tuple[str, str, dict[str, object] | None]] = [
    ("GET", "/admin/state", None),
    ("GET", "/admin/faults", None),
    ("POST", "/admin/faults", {"version": 1, "error_percent": 100}),
    ("DELETE", "/admin/faults", None),
    ("POST", "/admin/promote", {"to": "canary"}),
    ("POST", "/admin/weight", {"weight": 50}),
    ("POST", "/admin/step", {}),
    ("POST", "/admin/pause", {"reason": "not allowed"}),
    ("POST", "/admin/resume", None),
    ("POST", "/admin/abort", None),
]
WRONG = {
    "none": {},
    "empty": {"Authorization": ""},
    "bearer, no token": {"Authorization": "Bearer"},
    "wrong token": {"Authorization": "Bearer " + "x" * len(TOKEN)},
    "one character off": {"Authorization": f"Bearer {TOKEN[:-1]}{'y' if TOKEN[-1] != 'y' else 'z'}"},
    "a prefix": {"Authorization": f"Bearer {TOKEN[:-4]}"},
    "longer": {"Authorization": f"Bearer {TOKEN}0"},
    "another scheme": {"Authorization": f"Basic {TOKEN}"},
    "no scheme": {"Authorization": TOKEN},
    "elsewhere": {"X-Admin-Token": TOKEN, "Cookie": f"token={TOKEN}"},
}


@pytest.mark.parametrize("where", ["gateway", "nginx-internal"])
def test_every_admin_route_refuses_a_missing_or_wrong_token(stack: Stack, where: str) -> None:
    base = stack.internal_url if where == "nginx-internal" else stack.gateway_urls[1]
    before = httpx.get(f"{stack.gateway_urls[1]}/admin/state", headers={"Authorization": f"Bearer {TOKEN}"}).json()
    with httpx.Client(base_url=base, timeout=30) as client:
        for method, path, body in ROUTES:
            for name, headers in WRONG.items():
                response = client.request(method, path, json=body, headers=headers)
                assert response.status_code == 401, (method, path, name, response.text)
                assert response.headers["www-authenticate"] == "Bearer"
                assert response.json()["error"]["code"] == "invalid_api_key"
                assert TOKEN not in response.text
            # Even a body FastAPI cannot parse is a 401 first, not a 400 that confirms the route.
            garbled = client.request(method, path, content=b"{not json", headers={"Content-Type": "application/json"})
            assert garbled.status_code == 401
        # The right token works on the same routes (else every 401 above would prove nothing).
        assert client.get("/admin/state", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
        assert client.get("/admin/state", headers={"Authorization": f"bearer {TOKEN}"}).status_code == 200
    after = httpx.get(f"{stack.gateway_urls[1]}/admin/state", headers={"Authorization": f"Bearer {TOKEN}"}).json()
    # Nothing a refused request asked for happened: no fault, no pause, the same generation.
    assert after["faults"] == [] and after["paused"] is False
    assert after["generation"] == before["generation"]


def test_the_public_listener_does_not_serve_the_admin_api_even_with_the_token(stack: Stack) -> None:
    before = httpx.get(f"{stack.gateway_urls[1]}/admin/state", headers={"Authorization": f"Bearer {TOKEN}"}).json()
    with httpx.Client(base_url=stack.edge_url, timeout=30) as client:
        for method, path, body in ROUTES:
            response = client.request(method, path, json=body, headers={"Authorization": f"Bearer {TOKEN}"})
            assert response.status_code == 404, (method, path, response.text)
            assert response.json()["error"]["code"] == "not_found"
    after = httpx.get(f"{stack.gateway_urls[1]}/admin/state", headers={"Authorization": f"Bearer {TOKEN}"}).json()
    assert after["generation"] == before["generation"] and after["faults"] == [] and after["paused"] is False


def _calls(tree: ast.AST) -> set[str]:
    found = set()
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and isinstance(node.func.value, ast.Name)
        ):
            found.add(f"{node.func.value.id}.{node.func.attr}")
    return found


def test_the_token_is_compared_in_constant_time() -> None:
    source = Path(admin.__file__).read_text()
    tree = ast.parse(source)
    assert _calls(tree) & {"hmac.compare_digest", "secrets.compare_digest"}, "no constant-time comparison"
    # ... and nothing compares token material with == / != / in, which returns early on the first difference.
    secretish = {"token", "expected", "given", "digest", "secret"}
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            names = {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}
            equality = any(isinstance(op, ast.Eq | ast.NotEq | ast.In | ast.NotIn) for op in node.ops)
            assert not (equality and names & secretish), f"line {node.lineno}: {ast.get_source_segment(source, node)}"
