"""model.py's request handling without a server: history, message checks, images, per-row sampling."""

from __future__ import annotations

import base64
import importlib.util
import json
import sys
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import pytest
import torch

from core.contract import parse_config, render_config
from serving.triton.launcher import _pytriton_root
from tests.serving.conftest import BACKEND, png_bytes, serving_params
from tiny_model import shapes


@pytest.fixture(scope="module")
def backend() -> Iterator[ModuleType]:
    """model.py imported the way the stub imports it, next to the real triton_python_backend_utils."""
    utils = str(_pytriton_root() / "tritonserver" / "backends" / "python")
    sys.path.insert(0, utils)
    spec = importlib.util.spec_from_file_location("qwen3_vl_backend_model", BACKEND)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)
        sys.path.remove(utils)


def _turns(count: int) -> list[dict[str, Any]]:
    return [
        message
        for i in range(count)
        for message in ({"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"})
    ]


def test_history_keeps_system_last_turns_and_current(backend: ModuleType) -> None:
    system = {"role": "system", "content": "be brief"}
    current = {"role": "user", "content": "now"}

    kept = backend.truncate_history([system, *_turns(5), current], 2)

    assert kept == [system, *_turns(5)[-4:], current]


@pytest.mark.parametrize(("limit", "kept_turns"), [(0, 0), (1, 1), (3, 3), (9, 3)])
def test_history_limit_counts_user_turns(backend: ModuleType, limit: int, kept_turns: int) -> None:
    current = {"role": "user", "content": "now"}

    kept = backend.truncate_history([*_turns(3), current], limit)

    assert kept == [*_turns(3)[len(_turns(3)) - 2 * kept_turns :], current]


def test_history_without_system_or_prior_turns(backend: ModuleType) -> None:
    only = [{"role": "user", "content": "hi"}]

    assert backend.truncate_history(only, 0) == only


@pytest.mark.parametrize(
    ("document", "problem"),
    [
        (b"\xff", "not UTF-8 JSON"),
        (b"{}", "non-empty JSON list"),
        (b"[]", "non-empty JSON list"),
        (b'[{"role": "robot", "content": "x"}]', "message 0: needs a 'role'"),
        (b'[{"role": "user", "content": 3}]', "message 0: 'content'"),
        (b'[{"role": "user", "content": [{"type": "audio"}]}]', "message 0 part 0: unsupported part type 'audio'"),
        (b'[{"role": "user", "content": [{"type": "image_url", "image_url": "x"}]}]', "needs {'image_url'"),
        (b'[{"role": "user", "content": "a"}, {"role": "system", "content": "b"}]', "system message may only"),
        (b'[{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]', "last message must come"),
    ],
)
def test_bad_messages_are_named(backend: ModuleType, document: bytes, problem: str) -> None:
    with pytest.raises(backend.BadRequestError, match=problem):
        backend.parse_messages(document)


def test_images_become_placeholders_in_prompt_order(backend: ModuleType) -> None:
    pngs = [png_bytes(shapes.sample(7, i).image) for i in range(2)]
    urls = [f"data:image/png;base64,{base64.b64encode(png).decode()}" for png in pngs]
    messages = backend.parse_messages(
        json.dumps(
            [
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": urls[0]}}]},
                {"role": "assistant", "content": "ok"},
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "and?"}, {"type": "image_url", "image_url": {"url": urls[1]}}],
                },
            ]
        ).encode()
    )

    rendered, images = backend.to_template(messages)

    assert rendered[2]["content"] == [{"type": "text", "text": "and?"}, {"type": "image"}]
    assert [image.tobytes() for image in images] == [
        shapes.sample(7, i).image.convert("RGB").tobytes() for i in range(2)
    ]


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("https://example.com/cat.png", "base64 data URIs"),
        ("data:image/png;base64,@@@", "not a readable image"),
        ("data:image/png;base64," + base64.b64encode(b"not a png").decode(), "not a readable image"),
    ],
)
def test_unusable_images_are_refused(backend: ModuleType, url: str, problem: str) -> None:
    with pytest.raises(backend.BadRequestError, match=problem):
        backend.decode_image(url, "message 0 part 0")


def test_per_row_sampling_keeps_greedy_rows_greedy(backend: ModuleType) -> None:
    scores = torch.tensor([[0.1, 2.0, 1.9, -1.0], [0.1, 2.0, 1.9, -1.0]])

    out = backend._PerRowSampling([0.0, 1.0], top_p=0.9)(torch.zeros((2, 1), dtype=torch.long), scores)

    assert torch.isfinite(out[0]).tolist() == [False, True, False, False]
    # Top-p 0.9 keeps the two likely tokens of the sampled row and drops the tail.
    assert torch.isfinite(out[1]).tolist() == [False, True, True, False]
    torch.testing.assert_close(out[1, 1:3], scores[1, 1:3])


def _as_triton_passes_it(text: str) -> dict[str, Any]:
    """The JSON form of a config that the Python backend receives in ``args["model_config"]``."""
    from google.protobuf.json_format import MessageToDict

    return MessageToDict(parse_config(text), preserving_proto_field_name=True)


def test_model_py_accepts_the_rendered_contract(backend: ModuleType) -> None:
    config = _as_triton_passes_it(render_config("qwen3-vl-v1", 1, serving_params(max_new_tokens=5, max_history=1)))
    model = backend.TritonPythonModel()

    model._check_contract(config)

    parameters = model._parameters(config)
    assert {key: parameters[key] for key in ("MAX_NEW_TOKENS", "TEMPERATURE", "TOP_P", "MAX_HISTORY")} == {
        "MAX_NEW_TOKENS": "5",
        "TEMPERATURE": "0.0",
        "TOP_P": "1.0",
        "MAX_HISTORY": "1",
    }


def test_model_py_refuses_a_config_it_cannot_serve(backend: ModuleType) -> None:
    config = _as_triton_passes_it(render_config("qwen3-vl-v1", 1, serving_params()))
    config["output"] = config["output"][:-1]
    del config["parameters"]["MAX_HISTORY"]
    model = backend.TritonPythonModel()

    with pytest.raises(RuntimeError, match=r"regenerate config\.pbtxt and model\.py together"):
        model._check_contract(config)
    with pytest.raises(RuntimeError, match=r"lacks parameters \['MAX_HISTORY'\]"):
        model._parameters(config)
