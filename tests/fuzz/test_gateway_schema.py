"""Schemathesis against the gateway's own OpenAPI document, through the nginx edge, in front of a real
Triton serving the tiny model and a real MLflow registry. The OpenAI routes go through the edge's
public listener, everything else (the admin API, metrics, status, readiness) through its internal one.

Every answer: never a 5xx, every 4xx in OpenAI's error format, and conforming to the document
(status, content type, body schema: Schemathesis' checks). The admin API is fuzzed without a token
(where only a 401 may come back) and with it (last, as it moves the rollout; faults are cleared after).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st
from schemathesis import APIOperation, BaseSchema, Case, GenerationMode, Response
from schemathesis.checks import CheckFunction

from serving.edge.config import PUBLIC_PATHS
from serving.edge.launcher import Edge
from tests.fuzz.conftest import SEED
from tests.fuzz.strategies import IMAGE_URLS, VALID_IMAGE, data_uri, often
from tests.fuzz.tally import Tally
from tests.gateway.conftest import AUTH, TOKEN
from tests.gateway.e2e.conftest import MODEL, SetRollout

pytestmark = [pytest.mark.triton, pytest.mark.mlflow, pytest.mark.slow]

CHAT = "POST /v1/chat/completions"
#: Chat requests name the registered model, a served version, a version not served, or anything else.
MODELS = st.sampled_from([MODEL, MODEL, f"{MODEL}-v1", f"{MODEL}-v2", f"{MODEL}-v3", f"{MODEL}-v9", None])
HEADERS = st.fixed_dictionaries(
    {},
    optional={
        "X-Session-Id": st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), max_size=16),
        "X-Model-Version": st.sampled_from(["1", "2", "3", "9", "0", "-1", "v2", "", "99999999999999999999"]),
        "X-Request-Id": st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), max_size=140),
    },
)
NO_HEADERS: st.SearchStrategy[dict[str, str]] = st.just({})
WRONG_AUTH = st.one_of(
    st.just({}),
    st.sampled_from(["Bearer", "Bearer ", f"Basic {TOKEN}", f"Bearer {TOKEN[:-1]}", f"Bearer {TOKEN}x", TOKEN]).map(
        lambda value: {"Authorization": value}
    ),
    st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=60).map(
        lambda value: {"Authorization": f"Bearer {value}"}
    ),
)


@pytest.fixture(scope="module")
def schema(edge: Edge) -> BaseSchema:
    """The document as operators fetch it: ``GET /openapi.json`` through the edge's internal listener."""
    return schemathesis.openapi.from_url(f"{edge.internal_url}/openapi.json")


@pytest.fixture(scope="module")
def session() -> Iterator[requests.Session]:
    with requests.Session() as http:
        yield http


def operations(schema: BaseSchema, keep: Callable[[APIOperation], bool]) -> list[APIOperation]:
    found = [result.ok() for result in schema.get_all_operations()]
    return [operation for operation in found if keep(operation)]


def is_admin(operation: APIOperation) -> bool:
    return operation.path.startswith("/admin/")


def header(response: Response, name: str) -> str:
    """A response header's value (Schemathesis keeps each header as a list of values)."""
    values = response.headers.get(name.lower()) or [""]
    return values[0]


def assert_openai_error(response: Response) -> None:
    """``{"error": {"message", "type", "param", "code"}}``, as OpenAI's clients parse it."""
    assert header(response, "content-type").startswith("application/json"), response.headers
    body = response.json()
    assert list(body) == ["error"], body
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert isinstance(error["message"], str) and error["message"], error
    assert isinstance(error["type"], str) and error["type"], error
    assert error["param"] is None or isinstance(error["param"], str), error
    assert error["code"] is None or isinstance(error["code"], str), error


def _steer_negative(case: Case, data: st.DataObject) -> None:
    """Name the real model in a negative chat case whose ``model`` is valid, so its fault gets past routing."""
    body = case.body
    if isinstance(body, dict) and isinstance(body.get("model"), str) and 1 <= len(body["model"]) <= 200:
        body["model"] = data.draw(MODELS.filter(lambda model: model is not None))


def _steer(case: Case, data: st.DataObject) -> None:
    """Point a positive chat case at the real model often, so many reach Triton (and its images, too)."""
    body = case.body
    if not isinstance(body, dict):
        return
    model = data.draw(MODELS)
    if model is not None:
        body["model"] = model
    messages = body.get("messages")
    if isinstance(messages, list) and messages and data.draw(st.sampled_from([True, True, False])):
        messages[-1]["role"] = "user"
        for message in messages[1:]:
            if message.get("role") == "system":
                message["role"] = "assistant"
    for message in messages if isinstance(messages, list) else []:
        for part in message["content"] if isinstance(message.get("content"), list) else []:
            if part.get("type") == "image_url":
                part["image_url"]["url"] = data.draw(often(VALID_IMAGE.map(data_uri), IMAGE_URLS, 2))


@contextlib.contextmanager
def edge_log(edge: Edge) -> Iterator[None]:
    """nginx's own record of the requests sent inside the block: each logged, none answered with a 5xx."""
    start = edge.access_log.stat().st_size if edge.access_log.exists() else 0
    yield
    with edge.access_log.open("rb") as log:
        log.seek(start)
        lines = [json.loads(line) for line in log.read().splitlines() if line.strip()]
    assert lines, "nginx logged none of the fuzzer's requests"
    assert [line for line in lines if line["status"] >= 500] == []


def fuzz(
    operation: APIOperation,
    mode: GenerationMode,
    examples: int,
    *,
    edge: Edge,
    session: requests.Session,
    tally: Tally,
    headers: st.SearchStrategy[dict[str, str]] = NO_HEADERS,
    steer: Callable[[Case, st.DataObject], None] | None = None,
    steer_negative: Callable[[Case, st.DataObject], None] | None = None,
    expect: Callable[[Response], None] | None = None,
    excluded: tuple[CheckFunction, ...] = (),
) -> None:
    """``examples`` cases of one operation through the edge; every answer checked as the module says."""

    @seed(SEED)
    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(mode), extra=headers, data=st.data())
    def run(case: Case, extra: dict[str, str], data: st.DataObject) -> None:
        if steer is not None and mode is GenerationMode.POSITIVE:
            steer(case, data)
        if steer_negative is not None and mode is GenerationMode.NEGATIVE:
            steer_negative(case, data)
        base = edge.url if operation.path in PUBLIC_PATHS else edge.internal_url
        response = case.call(base_url=base, session=session, headers=extra, timeout=60)
        tally.add(f"{operation.label} {mode.value} {response.status_code}")
        assert response.status_code < 500, (response.status_code, response.text, case.as_curl_command())
        if response.status_code >= 400:
            assert_openai_error(response)
        if expect is not None:
            expect(response)
        case.validate_response(response, headers=extra, excluded_checks=list(excluded))

    run()


def test_chat_completions(schema: BaseSchema, edge: Edge, session: requests.Session, set_rollout: SetRollout) -> None:
    set_rollout({"champion": 1, "canary": 2}, weight=50)
    tally = Tally.named("gateway chat through nginx (schemathesis)")
    (chat,) = operations(schema, lambda operation: operation.label == CHAT)
    # The document's JSON Schema cannot say "the last message is the user's" or "this string is a PNG":
    # valid-by-schema requests the gateway refuses with a 400 are expected, so that one check is off.
    positive_acceptance = schemathesis.checks.positive_data_acceptance
    with edge_log(edge):
        for mode, examples in ((GenerationMode.POSITIVE, 900), (GenerationMode.NEGATIVE, 600)):
            fuzz(
                chat, mode, examples, edge=edge, session=session, tally=tally, headers=HEADERS, steer=_steer,
                steer_negative=_steer_negative, excluded=(positive_acceptance,),
            )  # fmt: skip
    answered = sum(count for key, count in tally.counts.items() if key.endswith(" 200"))
    assert answered >= 100, f"too few chat requests reached the model: {dict(tally.counts)}"


def test_read_endpoints(schema: BaseSchema, edge: Edge, session: requests.Session) -> None:
    tally = Tally.named("gateway read endpoints through nginx (schemathesis)")
    with edge_log(edge):
        for operation in operations(schema, lambda operation: operation.method == "get" and not is_admin(operation)):
            fuzz(operation, GenerationMode.POSITIVE, 5, edge=edge, session=session, tally=tally)
    # Nothing the fuzzers sent so far was answered with a 5xx, by the gateway's own count either.
    exposition = session.get(f"{edge.internal_url}/metrics", timeout=10).text
    assert not [line for line in exposition.splitlines() if 'code="5' in line], exposition


def test_admin_without_a_token_is_always_401(schema: BaseSchema, edge: Edge, session: requests.Session) -> None:
    tally = Tally.named("gateway admin API without token (schemathesis)")

    def refused(response: Response) -> None:
        assert response.status_code == 401, response.text
        assert header(response, "www-authenticate") == "Bearer"
        assert response.json()["error"]["type"] == "authentication_error"

    with edge_log(edge):
        for operation in operations(schema, is_admin):
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                fuzz(
                    operation, mode, 20, edge=edge, session=session, tally=tally, headers=WRONG_AUTH, expect=refused
                )  # fmt: skip


def test_admin_with_the_token(
    schema: BaseSchema, edge: Edge, session: requests.Session, set_rollout: SetRollout
) -> None:
    """Last: it moves the rollout and may inject faults; both are put back after."""
    set_rollout({"champion": 1, "canary": 2}, weight=50)
    tally = Tally.named("gateway admin API with token (schemathesis)")
    try:
        with edge_log(edge):
            for operation in operations(schema, is_admin):
                for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                    fuzz(operation, mode, 30, edge=edge, session=session, tally=tally, headers=st.just(AUTH))
    finally:
        session.delete(f"{edge.internal_url}/admin/faults", headers=AUTH, timeout=10)
        set_rollout({"champion": 1, "canary": 2}, weight=50)
    statuses = {key.rsplit(" ", 1)[1] for key in tally.counts}
    assert "200" in statuses and "409" in statuses, tally.counts
