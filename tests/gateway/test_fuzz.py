"""Nothing a client sends crashes the gateway: generated bodies get an answer or a 4xx, never a 500."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir

from tests.gateway.conftest import Harness, data_uri, png
from tests.gateway.fakes import FakeRegistry, FakeUpstream

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=12,
)
URLS = st.one_of(
    st.text(max_size=30),
    st.sampled_from(
        [
            data_uri(png()),
            "data:image/png;base64,",
            "data:image/png;base64,iVBORw0KGgo=",  # the PNG signature and nothing else
            "data:image/png;base64," + base64.b64encode(png()[:30]).decode(),  # IHDR cut short
            "data:image/jpeg;base64,/9j/4AAQ",
            "https://example.com/a.png",
            "file:///etc/passwd",
        ]
    ),
)
PARTS = st.one_of(
    st.fixed_dictionaries({"type": st.just("text"), "text": st.one_of(st.text(max_size=30), JSON)}),
    st.fixed_dictionaries({"type": st.just("image_url"), "image_url": st.fixed_dictionaries({"url": URLS})}),
    st.fixed_dictionaries({"type": st.one_of(st.text(max_size=10), JSON)}),
    JSON,
)
MESSAGES = st.fixed_dictionaries(
    {
        "role": st.one_of(st.sampled_from(["user", "assistant", "system", "tool"]), JSON),
        "content": st.one_of(st.text(max_size=30), st.lists(PARTS, max_size=3), JSON),
    }
)
BODIES = st.fixed_dictionaries(
    {
        "model": st.one_of(st.sampled_from(["qwen3-vl", "qwen3-vl-v2", "qwen3-vl-v0", "other"]), JSON),
        "messages": st.one_of(st.lists(MESSAGES, max_size=3), JSON),
    },
    optional={
        "max_tokens": st.one_of(st.integers(), JSON),
        "temperature": st.one_of(st.floats(), JSON),
        "top_p": st.one_of(st.floats(), JSON),
        "stream": JSON,
        "user": JSON,
        "n": JSON,
        "stream_options": JSON,
    },
)
HEADERS = st.fixed_dictionaries(
    {},
    optional={
        "X-Session-Id": st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=20),
        "X-Model-Version": st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=6),
    },
)


@pytest.fixture
def hypothesis_home(tmp_path: Path) -> Iterator[None]:
    """Hypothesis' caches in the test's tmp dir, not a ``.hypothesis`` folder in the working tree."""
    set_hypothesis_home_dir(str(tmp_path / "hypothesis"))
    try:
        yield
    finally:
        set_hypothesis_home_dir(None)


@pytest.mark.usefixtures("hypothesis_home")
def test_generated_requests_never_crash_the_gateway() -> None:
    with Harness(FakeRegistry({"champion": 1, "canary": 2}, 50), FakeUpstream.serving(1, 2)) as h:
        h.wait_split(1, 2, {1, 2})

        @settings(max_examples=250, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
        @given(body=st.one_of(BODIES, JSON, st.binary(max_size=200)), headers=HEADERS)
        def check(body: Any, headers: dict[str, str]) -> None:
            content = body if isinstance(body, bytes) else json.dumps(body).encode()
            response = h.client.post(
                "/v1/chat/completions", content=content, headers={"Content-Type": "application/json", **headers}
            )
            assert response.status_code in (200, 400, 404, 413), (response.status_code, response.text)
            assert response.headers["x-request-id"] and response.headers["x-model-version"]
            if response.status_code != 200:
                assert set(response.json()["error"]) == {"message", "type", "param", "code"}

        check()
        assert h.client.get("/healthz").status_code == 200
        assert '"code":"500"' not in h.client.get("/metrics").text and 'code="500"' not in h.client.get("/metrics").text


#: Header values as they reach the gateway: HTTP carries bytes, Starlette reads them as latin-1, so
#: "²" arrives as itself (byte 0xB2), and any other character as its UTF-8 bytes.
UNICODE_NUMBERS = st.text(
    alphabet=st.one_of(
        st.characters(categories=["Nd", "No", "Nl"]),
        st.sampled_from("0123456789v ²³¹¼"),
    ),
    min_size=1,
    max_size=6,
)


def _header_bytes(value: str) -> bytes:
    try:
        return value.encode("latin-1")
    except UnicodeEncodeError:
        return value.encode("utf-8")


@pytest.mark.usefixtures("hypothesis_home")
def test_unicode_digits_in_headers_are_a_400_never_a_500() -> None:
    """``X-Model-Version: ²`` was a 500: ``str.isdigit()`` accepts it and ``int()`` then fails."""
    with Harness(FakeRegistry({"champion": 1, "canary": 2}, 50), FakeUpstream.serving(1, 2)) as h:
        h.wait_split(1, 2, {1, 2})
        body = json.dumps({"model": "qwen3-vl", "messages": [{"role": "user", "content": "hi"}]}).encode()

        @settings(max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
        @given(value=UNICODE_NUMBERS)
        def check(value: str) -> None:
            headers = {"Content-Type": "application/json", "X-Model-Version": _header_bytes(value)}
            response = h.client.post("/v1/chat/completions", content=body, headers=headers)
            assert response.status_code in (200, 400, 404), (value, response.status_code, response.text)
            number = value.strip().removeprefix("v")
            if not value.strip():  # a blank header pins nothing
                assert response.status_code == 200, (value, response.text)
            elif response.status_code != 400:  # a version was read: only from ASCII digits
                assert number.isascii() and number.isdigit(), (value, response.status_code)
                assert (response.status_code == 200) == (int(number) in (1, 2)), (value, response.status_code)
            else:
                assert response.json()["error"]["param"] == "X-Model-Version"

        check()
