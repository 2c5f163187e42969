"""model.py without a server: history, message checks, limits, images, per-row sampling, and
``execute`` answering every request once (a fake model behind the real processor and the real
``triton_python_backend_utils``, with stand-ins for the types the stub injects into it)."""

from __future__ import annotations

import base64
import importlib.util
import io
import json
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any, ClassVar

import numpy as np
import pytest
import torch

from core.contract import IMAGE_FORMATS, PARAMETERS, parse_config, render_config
from serving.triton.launcher import _pytriton_root
from tests.serving.conftest import BACKEND, data_url, png_bytes, png_declaring, serving_params
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

    rendered, images = backend.to_template(messages, 1 << 20, IMAGE_FORMATS)

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
        backend.decode_image(url, "message 0 part 0", 1 << 20, IMAGE_FORMATS)


@pytest.mark.parametrize(
    ("width", "height", "problem"),
    [
        # Past PIL's own bomb threshold (it refuses these at open): still a 400 naming our limit.
        (20000, 20000, r"message 0 part 1: the image is over MAX_IMAGE_PIXELS=1048576"),
        # Below PIL's threshold, above ours: refused from the header, before any pixel is decoded.
        (2000, 1000, r"message 0 part 1: the image is 2000x1000 \(2000000 pixels\), over MAX_IMAGE_PIXELS=1048576"),
    ],
)
def test_images_over_the_pixel_limit_are_refused_from_their_header(
    backend: ModuleType, width: int, height: int, problem: str
) -> None:
    bomb = png_declaring(width, height)
    assert len(bomb) < 20_000

    with pytest.raises(backend.BadRequestError, match=problem):
        backend.decode_image(data_url(bomb), "message 0 part 1", 1 << 20, IMAGE_FORMATS)


def test_an_image_at_the_pixel_limit_is_decoded(backend: ModuleType) -> None:
    image = shapes.sample(7, 0).image

    decoded = backend.decode_image(data_url(png_bytes(image)), "m", image.width * image.height, IMAGE_FORMATS)

    assert decoded.size == image.size and decoded.mode == "RGB"


def test_the_model_opens_only_the_contracts_image_formats(backend: ModuleType) -> None:
    """The gateway's list (core.contract.IMAGE_FORMATS), read from config.pbtxt: a TIFF Pillow could
    open is refused, and opened once the list names it."""
    buffer = io.BytesIO()
    shapes.sample(7, 0).image.save(buffer, format="TIFF")
    url = data_url(buffer.getvalue())

    with pytest.raises(backend.BadRequestError, match="not a readable image"):
        backend.decode_image(url, "m", 1 << 20, IMAGE_FORMATS)
    assert backend.decode_image(url, "m", 1 << 20, (*IMAGE_FORMATS, "TIFF")).mode == "RGB"


class _Row:
    """What ``_Decoder`` reads of a row: its sampling and (unused here) grammar state."""

    def __init__(self, backend: ModuleType, **sampling: Any) -> None:
        self.sampling = backend.Sampling(**{"temperature": 0.0, "top_p": 1.0, "seed": 0, **sampling})
        self.matcher = None
        self.done = False
        self.noted: list[int] = []

    def note_logprobs(self, log_probabilities: torch.Tensor, token: int) -> None:
        self.noted.append(token)


def _pick(
    backend: ModuleType, rows: list[_Row], scores: torch.Tensor, generated: list[list[int]] | None = None
) -> list[int]:
    prompt = torch.zeros((len(rows), 1), dtype=torch.long)
    ids = torch.cat([prompt, torch.tensor(generated)], dim=1) if generated else prompt
    out = backend._Decoder(rows, 1, scores.shape[1], torch.device("cpu"))(ids, scores)
    assert torch.isfinite(out).sum(dim=1).tolist() == [1] * len(rows), "exactly one token stays per row"
    return out.argmax(dim=1).tolist()


def test_decoder_keeps_greedy_rows_greedy_and_samples_the_others(backend: ModuleType) -> None:
    scores = torch.tensor([[0.1, 2.0, 1.9, -1.0]] * 2)
    picks = [
        _pick(backend, [_Row(backend, seed=seed), _Row(backend, temperature=1.0, top_p=0.9, seed=seed)], scores)
        for seed in range(40)
    ]

    assert {pick[0] for pick in picks} == {1}
    # Top-p 0.9 keeps the two likely tokens of the sampled row and drops the tail.
    assert {pick[1] for pick in picks} == {1, 2}


def test_decoder_samples_each_row_from_its_own_seed(backend: ModuleType) -> None:
    scores = torch.zeros((1, 50))

    def draws(seed: int, neighbours: int) -> list[int]:
        rows = [
            _Row(backend, temperature=1.0, seed=seed),
            *(_Row(backend, temperature=1.0, seed=s) for s in range(neighbours)),
        ]
        decoder = backend._Decoder(rows, 1, 50, torch.device("cpu"))
        ids = torch.zeros((len(rows), 1), dtype=torch.long)
        return [int(decoder(ids, scores.repeat(len(rows), 1))[0].argmax()) for _ in range(20)]

    # The same seed draws the same tokens whatever shares its batch; another seed draws others.
    assert draws(7, 0) == draws(7, 3)
    assert draws(7, 0) != draws(8, 0)


def test_decoder_applies_bias_and_penalties_per_row(backend: ModuleType) -> None:
    scores = torch.tensor([[2.0, 1.0, 0.0]] * 3)
    plain, biased, penalized = _Row(backend), _Row(backend, logit_bias={2: 100.0}), _Row(backend, frequency_penalty=2.0)

    # Token 0 was generated twice already by every row: a frequency penalty of 2 takes 4 off its score.
    picks = _pick(backend, [plain, biased, penalized], scores, generated=[[0, 0]] * 3)

    assert picks == [0, 2, 1]


def test_decoder_notes_logprobs_only_for_rows_that_asked(backend: ModuleType) -> None:
    asked, quiet = _Row(backend, logprobs=True), _Row(backend)

    _pick(backend, [asked, quiet], torch.tensor([[0.0, 3.0]] * 2))

    assert (asked.noted, quiet.noted) == ([1], [])


def _as_triton_passes_it(text: str) -> dict[str, Any]:
    """The JSON form of a config that the Python backend receives in ``args["model_config"]``."""
    from google.protobuf.json_format import MessageToDict

    return MessageToDict(parse_config(text), preserving_proto_field_name=True)


def test_model_py_reads_exactly_the_parameters_the_contract_renders(backend: ModuleType) -> None:
    assert sorted(backend._PARAMETERS) == sorted(PARAMETERS)


def test_model_py_accepts_the_rendered_contract(backend: ModuleType) -> None:
    params = serving_params(
        max_new_tokens=5, max_history=1, max_images=2, max_image_pixels=4096, max_prompt_tokens=300, temperature=0.5
    )
    config = _as_triton_passes_it(render_config("qwen3-vl-v1", 1, params))
    model = backend.TritonPythonModel()

    model._check_contract(config)
    model._configure(model._parameters(config))

    assert model.limits == backend.Limits(max_new_tokens=5, max_images=2, max_image_pixels=4096, max_prompt_tokens=300)
    assert (model.temperature, model.top_p, model.max_history, model.compute_dtype) == (0.5, 1.0, 1, "float32")
    assert model.image_formats == IMAGE_FORMATS


def test_model_py_refuses_a_config_it_cannot_serve(backend: ModuleType) -> None:
    config = _as_triton_passes_it(render_config("qwen3-vl-v1", 1, serving_params()))
    config["output"] = config["output"][:-1]
    del config["parameters"]["MAX_HISTORY"]
    model = backend.TritonPythonModel()

    with pytest.raises(RuntimeError, match=r"regenerate config\.pbtxt and model\.py together"):
        model._check_contract(config)
    with pytest.raises(RuntimeError, match=r"lacks parameters \['MAX_HISTORY'\]"):
        model._parameters(config)


def test_model_py_refuses_a_parameter_it_would_ignore(backend: ModuleType) -> None:
    config = _as_triton_passes_it(render_config("qwen3-vl-v1", 1, serving_params()))
    config["parameters"]["EXECUTION_ENV_PATH"] = {"string_value": "$$TRITON_MODEL_DIRECTORY/env.tar.gz"}
    backend.TritonPythonModel._parameters(config)
    config["parameters"]["MAX_AUDIO_SECONDS"] = {"string_value": "30"}

    with pytest.raises(
        RuntimeError, match=r"sets parameters \['MAX_AUDIO_SECONDS'\] that this model\.py does not read"
    ):
        backend.TritonPythonModel._parameters(config)


@pytest.mark.parametrize(
    ("key", "value", "problem"),
    [
        ("MAX_IMAGES", "many", "MAX_IMAGES='many' must be a number >= 0"),
        ("MAX_NEW_TOKENS", "0", "MAX_NEW_TOKENS='0' must be a number >= 1"),
        ("TEMPERATURE", "nan", "TEMPERATURE='nan' must be a number"),
        ("COMPUTE_DTYPE", "auto", r"COMPUTE_DTYPE='auto' must be one of \['bfloat16', 'float16', 'float32'\]"),
    ],
)
def test_model_py_refuses_a_bad_parameter_value_by_name(
    backend: ModuleType, key: str, value: str, problem: str
) -> None:
    config = _as_triton_passes_it(render_config("qwen3-vl-v1", 1, serving_params()))
    config["parameters"][key] = {"string_value": value}
    model = backend.TritonPythonModel()

    with pytest.raises(RuntimeError, match=problem):
        model._configure(model._parameters(config))


def test_prompt_length_matches_what_the_processor_feeds_the_model(backend: ModuleType, tiny_checkpoint: Path) -> None:
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_checkpoint)
    # Sizes the processor keeps, rounds and shrinks (its longest_edge is 4096 pixels).
    images = [
        shapes.sample(7, 0).image.convert("RGB"),
        *(shapes.sample(7, 1).image.resize(size).convert("RGB") for size in ((50, 30), (90, 70))),
    ]
    rendered = [
        {"role": "user", "content": [*({"type": "image"} for _ in images), {"type": "text", "text": "How many?"}]}
    ]
    prompt = processor.apply_chat_template(rendered, add_generation_prompt=True, tokenize=False)

    fed = processor(text=[prompt], images=images, return_tensors="pt")["input_ids"].shape[1]

    assert backend.prompt_length(processor, prompt, images) == fed
    assert backend.prompt_length(processor, "plain text", []) == len(processor.tokenizer("plain text")["input_ids"])
    # An image processor that cannot count from sizes: the processor itself expands the prompt.
    processor.image_processor = _Opaque(processor.image_processor)
    assert backend.prompt_length(processor, prompt, images) == fed


class _Opaque:
    """An image processor without ``get_number_of_image_patches`` (everything else delegated)."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        if name == "get_number_of_image_patches":
            raise AttributeError(name)
        return getattr(self._inner, name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._inner(*args, **kwargs)


# --- execute() with the types the stub injects into triton_python_backend_utils, and a fake model ---


class FakeTritonError:
    """pb_utils.TritonError: a message and a code (the codes the Python backend defines)."""

    UNKNOWN, INTERNAL, NOT_FOUND, INVALID_ARG, UNAVAILABLE, UNSUPPORTED, ALREADY_EXISTS, CANCELLED = range(8)

    def __init__(self, message: str, code: int = INTERNAL) -> None:
        self._message, self._code = message, code

    def message(self) -> str:
        return self._message

    def code(self) -> int:
        return self._code


class FakeTensor:
    """pb_utils.Tensor."""

    def __init__(self, name: str, array: np.ndarray) -> None:
        self._name, self._array = name, array

    def name(self) -> str:
        return self._name

    def as_numpy(self) -> np.ndarray:
        return self._array


class FakeResponse:
    """pb_utils.InferenceResponse."""

    def __init__(self, output_tensors: list[FakeTensor], error: FakeTritonError | None = None) -> None:
        self._outputs, self._error = output_tensors, error

    def output_tensors(self) -> list[FakeTensor]:
        return self._outputs

    def has_error(self) -> bool:
        return self._error is not None

    def error(self) -> FakeTritonError | None:
        return self._error

    def output(self, name: str) -> Any:
        (tensor,) = [t for t in self._outputs if t.name() == name]
        value = tensor.as_numpy().reshape(-1)[0]
        return bytes(value).decode() if isinstance(value, bytes | np.bytes_) else int(value)


class FakeSender:
    """pb_utils.InferenceResponseSender: what was sent, with its flags; sending after the final is a bug."""

    def __init__(self) -> None:
        self.sent: list[tuple[FakeResponse | None, int]] = []

    def send(self, response: FakeResponse | None = None, flags: int = 0) -> None:
        assert not self.finished, "a response was sent after the final one"
        self.sent.append((response, flags))

    @property
    def finished(self) -> bool:
        return any(flags & 1 for _, flags in self.sent)

    @property
    def responses(self) -> list[FakeResponse]:
        return [response for response, _ in self.sent if response is not None]

    def answer(self) -> str:
        """The text of the whole stream (its pieces joined)."""
        return "".join(r.output("text") for r in self.responses if not r.has_error())

    def last(self) -> FakeResponse:
        return self.responses[-1]


class FakeRequest:
    """pb_utils.InferenceRequest as the backend sees it: named input tensors (batch dimension first), its
    response sender, and whether its client has gone (``cancel_after``: after that many responses)."""

    def __init__(
        self, messages: list[dict[str, Any]] | bytes, cancel_after: int | None = None, **scalars: np.ndarray
    ) -> None:
        document = messages if isinstance(messages, bytes) else json.dumps(messages).encode()
        self._inputs = [FakeTensor("messages", np.array([[document]], dtype=np.object_))]
        self._inputs += [FakeTensor(name, value) for name, value in scalars.items()]
        self.sender = FakeSender()
        self.cancel_after = cancel_after

    def inputs(self) -> list[FakeTensor]:
        return self._inputs

    def get_response_sender(self) -> FakeSender:
        return self.sender

    def is_cancelled(self) -> bool:
        return self.cancel_after is not None and len(self.sender.sent) >= self.cancel_after


class FakeLogger:
    lines: ClassVar[list[tuple[str, str]]] = []

    @classmethod
    def log_info(cls, message: str) -> None:
        cls.lines.append(("info", message))

    @classmethod
    def log_warn(cls, message: str) -> None:
        cls.lines.append(("warn", message))

    @classmethod
    def log_error(cls, message: str) -> None:
        cls.lines.append(("error", message))

    @classmethod
    def log_verbose(cls, message: str) -> None:
        cls.lines.append(("verbose", message))


EOS = 392


class FakeModel:
    """A model whose every row prefers the tokens of ``answer`` and then end-of-sequence, step by step,
    through the real logits processor and stopping criteria ``generate`` gets; or it raises for the
    batches ``fails`` picks (``fail_at``: after that many steps)."""

    def __init__(self, processor: Any, answer: str, fails: Callable[[int], BaseException | None]) -> None:
        from transformers import GenerationConfig

        self.generation_config = GenerationConfig(eos_token_id=[EOS, 0], pad_token_id=0)
        vocab = len(processor.tokenizer)
        text = type("TextConfig", (), {"vocab_size": vocab})()
        self.config = type("Config", (), {"get_text_config": lambda self: text})()
        self.vocab = vocab
        self.answer_ids = processor.tokenizer(answer)["input_ids"]
        self.fails = fails
        self.fail_at = 0
        self.batch_sizes: list[int] = []
        self.steps = 0

    def eval(self) -> FakeModel:
        return self

    def generate(
        self,
        input_ids: torch.Tensor,
        generation_config: Any = None,
        logits_processor: Any = None,
        stopping_criteria: Any = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        self.batch_sizes.append(input_ids.shape[0])
        failure = self.fails(input_ids.shape[0])
        if failure is not None and self.fail_at == 0:
            raise failure
        preferred = [*self.answer_ids, EOS]
        ids = input_ids
        for step in range(generation_config.max_new_tokens):
            if failure is not None and step == self.fail_at:
                raise failure
            scores = torch.full((ids.shape[0], self.vocab), -10.0)
            scores[:, preferred[min(step, len(preferred) - 1)]] = 10.0
            chosen = logits_processor(ids, scores).argmax(dim=-1)
            ids = torch.cat([ids, chosen[:, None]], dim=1)
            self.steps += 1
            if bool(stopping_criteria(ids, None).all()):
                break
        return ids


@pytest.fixture()
def stub_types(backend: ModuleType, monkeypatch: pytest.MonkeyPatch) -> type[FakeLogger]:
    """Install the stand-ins for what the stub adds to triton_python_backend_utils; returns the logger."""
    FakeLogger.lines = []
    for name, fake in (
        ("TritonError", FakeTritonError),
        ("Tensor", FakeTensor),
        ("InferenceResponse", FakeResponse),
        ("Logger", FakeLogger),
    ):
        monkeypatch.setattr(backend.pb_utils, name, fake, raising=False)
    return FakeLogger


Served = Callable[..., tuple[Any, FakeModel]]


@pytest.fixture()
def served(
    backend: ModuleType,
    stub_types: type[FakeLogger],
    tiny_checkpoint: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Served:
    """``served(fails=..., answer=..., **params)``: a TritonPythonModel set up as the stub does, over a fake model."""

    def start(
        fails: Callable[[int], BaseException | None] = lambda size: None, answer: str = "red", **params: Any
    ) -> tuple[Any, FakeModel]:
        (tmp_path / "1").symlink_to(tiny_checkpoint)
        fakes: list[FakeModel] = []

        def load(folder: Path, device: str, dtype: str) -> FakeModel:
            from transformers import AutoProcessor

            fakes.append(FakeModel(AutoProcessor.from_pretrained(folder), answer, fails))
            return fakes[0]

        monkeypatch.setattr(backend, "load_model", load)
        model = backend.TritonPythonModel()
        model.initialize(
            {
                "model_config": json.dumps(
                    _as_triton_passes_it(render_config("qwen3-vl-v1", 1, serving_params(**params)))
                ),
                "model_version": "1",
                "model_repository": str(tmp_path),
                "model_instance_kind": "CPU",
                "model_instance_device_id": "0",
            }
        )
        return model, fakes[0]

    return start


def _ask(index: int) -> list[dict[str, Any]]:
    sample = shapes.sample(7, index)
    return [
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": data_url(png_bytes(sample.image))}},
                {"type": "text", "text": sample.question},
            ],
        }
    ]


def _int32(value: int) -> np.ndarray:
    return np.array([[value]], dtype=np.int32)


def _text(value: Any) -> np.ndarray:
    return np.array([[json.dumps(value).encode()]], dtype=np.object_)


def test_execute_streams_each_request_and_ends_it_once(served: Served) -> None:
    model, fake = served(answer="red circle")
    requests = [FakeRequest(_ask(i)) for i in range(3)]

    assert model.execute(requests) is None  # decoupled: everything goes through the senders

    assert fake.batch_sizes == [3]
    for request in requests:
        sender = request.sender
        assert sender.answer() == "red circle"
        assert [flags for _, flags in sender.sent] == [0] * (len(sender.sent) - 1) + [1]
        assert len(sender.responses) >= 2, "the answer came in one piece"
        last = sender.last()
        assert last.output("finish_reason") == "stop"
        # The end-of-sequence token is not a completion token.
        assert last.output("completion_tokens") == len(fake.answer_ids)
        assert last.output("prompt_tokens") > 20
        assert all(r.output("finish_reason") == "" for r in sender.responses[:-1])


def test_finish_reason_is_stop_when_the_end_comes_at_the_last_allowed_token(served: Served) -> None:
    model, fake = served(answer="red")
    (ends, cut) = [FakeRequest(_ask(0), max_tokens=_int32(2)), FakeRequest(_ask(1), max_tokens=_int32(1))]

    model.execute([ends, cut])

    assert len(fake.answer_ids) == 1
    # "red" then the end of sequence as the second and last allowed token: the model stopped by itself.
    assert (ends.sender.answer(), ends.sender.last().output("finish_reason")) == ("red", "stop")
    assert ends.sender.last().output("completion_tokens") == 1
    # Cut at its one allowed token, before the model could say it was done.
    assert (cut.sender.answer(), cut.sender.last().output("finish_reason")) == ("red", "length")


def test_a_stop_sequence_ends_the_answer_and_is_not_returned(served: Served) -> None:
    model, _ = served(answer="red circle and blue square", max_new_tokens=16)
    request = FakeRequest(_ask(0), stop=_text(["blue sq", "nothing"]))
    plain = FakeRequest(_ask(1))

    model.execute([request, plain])

    sender = request.sender
    assert sender.answer() == "red circle and"
    assert sender.last().output("finish_reason") == "stop"
    # Nothing of the stop sequence ever went out, not even a piece of it that later turned out to be it.
    assert all("blue" not in r.output("text") for r in sender.responses)
    assert plain.sender.answer() == "red circle and blue square"


def test_a_cancelled_request_stops_and_its_neighbours_go_on(served: Served, stub_types: type[FakeLogger]) -> None:
    model, _ = served(answer="red circle and blue square", max_new_tokens=16)
    gone, stays = FakeRequest(_ask(0), cancel_after=1), FakeRequest(_ask(1))

    model.execute([gone, stays])

    assert len(gone.sender.responses) == 1 and gone.sender.finished
    assert gone.sender.sent[-1] == (None, 1)  # the end of its stream, without an answer nobody reads
    assert stays.sender.answer() == "red circle and blue square"
    assert any(
        "a request was cancelled by its client after 1 of at most 16 tokens" in line for _, line in stub_types.lines
    ), stub_types.lines


def test_a_request_cancelled_before_it_ran_is_ended_at_once(served: Served) -> None:
    model, fake = served()
    gone = FakeRequest(_ask(0), cancel_after=0)

    model.execute([gone, FakeRequest(_ask(1))])

    assert gone.sender.sent == [(None, 1)]
    assert fake.batch_sizes == [1]


def test_logprobs_come_with_their_tokens(served: Served) -> None:
    model, fake = served(answer="red circle")
    request = FakeRequest(_ask(0), logprobs=np.array([[True]]), top_logprobs=_int32(2))
    plain = FakeRequest(_ask(1))

    model.execute([request, plain])

    entries = [entry for r in request.sender.responses for entry in json.loads(r.output("token_logprobs") or "[]")]
    assert [entry["token"] for entry in entries] == [model.decode([t]) for t in fake.answer_ids]
    for entry in entries:
        assert entry["logprob"] <= 0 and entry["bytes"] == list(entry["token"].encode())
        assert len(entry["top_logprobs"]) == 2 and entry["top_logprobs"][0]["token"] == entry["token"]
    assert all(r.output("token_logprobs") == "" for r in plain.sender.responses)


def test_logprob_bytes_of_a_character_split_over_tokens_rebuild_it(served: Served) -> None:
    model, fake = served(answer="red 圆 😀", max_new_tokens=16)
    request = FakeRequest(_ask(0), logprobs=np.array([[True]]))

    model.execute([request])

    entries = [entry for r in request.sender.responses for entry in json.loads(r.output("token_logprobs") or "[]")]
    assert len(entries) == len(fake.answer_ids) > len("red 圆 😀")  # some tokens hold part of a character
    assert "\ufffd" in {entry["token"] for entry in entries}
    assert b"".join(bytes(entry["bytes"]) for entry in entries).decode() == "red 圆 😀"


def test_json_mode_constrains_the_answer_to_a_json_object(served: Served) -> None:
    model, _ = served(answer="red circle", max_new_tokens=32)
    request = FakeRequest(_ask(0), response_format=_text({"type": "json_object"}))
    free = FakeRequest(_ask(1), response_format=_text({"type": "text"}))

    model.execute([request, free])

    answer = request.sender.answer()
    # The fake model wants to say "red circle"; the grammar lets it say only JSON.
    assert answer.startswith("{"), answer
    if request.sender.last().output("finish_reason") == "stop":
        assert isinstance(json.loads(answer), dict)
    assert free.sender.answer() == "red circle"


def test_a_failed_batch_is_logged_freed_and_answered_one_by_one(
    served: Served, stub_types: type[FakeLogger], backend: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, fake = served(
        fails=lambda size: (
            torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB") if size > 1 else None
        )
    )
    collections: list[int] = []
    collect = backend.gc.collect
    monkeypatch.setattr(backend.gc, "collect", lambda *args: collections.append(1) or collect(*args))
    requests = [FakeRequest(_ask(i)) for i in range(3)]

    model.execute(requests)

    assert [request.sender.answer() for request in requests] == ["red"] * 3
    assert all(not r.has_error() for request in requests for r in request.sender.responses)
    assert fake.batch_sizes == [3, 1, 1, 1]
    assert collections, "memory was not freed after the batch failed"
    warnings = [message for level, message in stub_types.lines if level == "warn"]
    assert len(warnings) == 1
    assert "a batch of 3 requests" in warnings[0]
    assert "OutOfMemoryError: CUDA out of memory" in warnings[0]


def test_a_batch_failing_mid_stream_ends_the_rows_that_had_begun(served: Served) -> None:
    model, fake = served(
        answer="red circle and blue", fails=lambda size: RuntimeError("device lost") if size > 1 else None
    )
    fake.fail_at = 2  # two tokens streamed, then the batch fails
    begun, fresh = FakeRequest(_ask(0)), FakeRequest(_ask(1), cancel_after=None)

    model.execute([begun, fresh])

    # The first row had streamed part of its answer: it cannot start again, it ends with the error.
    last = begun.sender.sent[-1][0]
    assert last is not None and last.has_error() and begun.sender.finished
    assert (
        "internal error: generation failed after the answer had begun: RuntimeError: device lost"
        in last.error().message()
    )
    assert begun.sender.answer().startswith("red")


def test_only_the_request_that_fails_alone_gets_an_error(served: Served, stub_types: type[FakeLogger]) -> None:
    calls = iter(range(100))
    # The batch fails, then the second request fails on its own too: only it gets the error.
    model, _ = served(fails=lambda size: RuntimeError("device lost") if size > 1 or next(calls) == 1 else None)
    requests = [FakeRequest(_ask(i)) for i in range(3)]

    model.execute(requests)

    errors = [request.sender.last().has_error() for request in requests]
    assert errors == [False, True, False]
    error = requests[1].sender.last().error()
    assert error.code() == FakeTritonError.INTERNAL
    assert "internal error: generation failed: RuntimeError: device lost" in error.message()
    assert ("error", "generate failed for a single request: RuntimeError: device lost") in stub_types.lines


def test_every_request_is_answered_once_even_when_execute_itself_breaks(
    served: Served, stub_types: type[FakeLogger], monkeypatch: pytest.MonkeyPatch
) -> None:
    model, _ = served()
    requests = [FakeRequest(_ask(0)), FakeRequest(b"not json"), FakeRequest(_ask(1))]
    monkeypatch.setattr(model, "_generate_isolated", lambda batch: 1 / 0)

    model.execute(requests)

    assert all(len(request.sender.sent) == 1 and request.sender.finished for request in requests)
    assert [request.sender.last().error().code() for request in requests] == [
        FakeTritonError.INTERNAL,
        FakeTritonError.INVALID_ARG,
        FakeTritonError.INTERNAL,
    ]
    assert any(level == "error" and "ZeroDivisionError" in message for level, message in stub_types.lines)


@pytest.mark.parametrize(
    ("params", "request_", "problem"),
    [
        (
            {"max_images": 1},
            lambda: FakeRequest([_ask(0)[0], {"role": "assistant", "content": "ok"}, *_ask(1)]),
            r"holds 2 images \(after dropping old turns\), over MAX_IMAGES=1",
        ),
        (
            {"max_image_pixels": 1000},
            lambda: FakeRequest(_ask(0)),
            r"message 0 part 0: the image is 64x64 \(4096 pixels\), over MAX_IMAGE_PIXELS=1000",
        ),
        ({"max_prompt_tokens": 20}, lambda: FakeRequest(_ask(0)), "the prompt is 31 tokens, over MAX_PROMPT_TOKENS=20"),
        (
            {"max_new_tokens": 4},
            lambda: FakeRequest(_ask(0), max_tokens=_int32(5)),
            "from 1 to MAX_NEW_TOKENS=4, got 5",
        ),
    ],
    ids=["images", "pixels", "prompt-tokens", "new-tokens"],
)
def test_each_limit_is_a_400_that_names_it(
    served: Served, params: dict[str, int], request_: Callable[[], FakeRequest], problem: str
) -> None:
    model, fake = served(**params)
    # The neighbour is within every limit: text only, and short.
    refused, answered = request_(), FakeRequest([{"role": "user", "content": "hi"}])

    model.execute([refused, answered])

    error = refused.sender.last().error()
    assert error.code() == FakeTritonError.INVALID_ARG
    assert re.search(problem, error.message()), error.message()
    assert answered.sender.answer() == "red"
    assert fake.batch_sizes == [1]


@pytest.mark.parametrize(
    ("inputs", "problem"),
    [
        ({"top_p": np.array([[0.0]], dtype=np.float32)}, "'top_p' must be more than 0 and at most 1"),
        ({"presence_penalty": np.array([[2.5]], dtype=np.float32)}, "'presence_penalty' must be from -2 to 2"),
        ({"frequency_penalty": np.array([[-3.0]], dtype=np.float32)}, "'frequency_penalty' must be from -2 to 2"),
        ({"stop": _text(["a", "b", "c", "d", "e"])}, "'stop' must be a string or a list of up to 4"),
        ({"stop": _text([""])}, "'stop' must be a string or a list of up to 4 non-empty strings"),
        ({"logit_bias": _text({"99999": 1})}, r"'logit_bias' must map up to 300 token ids \(0 to 404\)"),
        ({"logit_bias": _text({"5": 101})}, "to biases from -100 to 100"),
        ({"top_logprobs": _int32(21)}, "'top_logprobs' must be from 0 to 20"),
        ({"top_logprobs": _int32(2)}, "'top_logprobs' needs 'logprobs' to be true"),
        ({"response_format": _text({"type": "yaml"})}, "'response_format' type must be 'text', 'json_object'"),
        ({"response_format": _text({"type": "json_schema"})}, "'response_format' json_schema needs"),
        ({"response_format": np.array([[b"{"]], dtype=np.object_)}, "'response_format' is not UTF-8 JSON"),
    ],
)
def test_each_sampling_input_is_checked_by_name(served: Served, inputs: dict[str, np.ndarray], problem: str) -> None:
    model, _ = served()
    refused, answered = FakeRequest(_ask(0), **inputs), FakeRequest(_ask(1))

    model.execute([refused, answered])

    error = refused.sender.last().error()
    assert error.code() == FakeTritonError.INVALID_ARG
    assert re.search(problem, error.message()), error.message()
    assert answered.sender.answer() == "red"


def test_history_dropped_before_counting_images(served: Served) -> None:
    model, _ = served(max_images=1, max_history=0)
    conversation = [_ask(0)[0], {"role": "assistant", "content": "ok"}, *_ask(1)]
    request = FakeRequest(conversation)

    model.execute([request])

    assert request.sender.answer() == "red"


def test_memory_is_returned_to_the_gpu_after_a_failure(backend: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    emptied: list[int] = []
    monkeypatch.setattr(backend.torch.cuda, "empty_cache", lambda: emptied.append(1))
    model = backend.TritonPythonModel()
    model.device = torch.device("cpu")
    model._free_memory()
    assert emptied == []

    model.device = torch.device("cuda", 0)
    model._free_memory()

    assert emptied == [1]


@pytest.fixture(scope="module")
def nf4_bfloat16_checkpoint(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny checkpoint through the quantize stage's code as a GPU build would be: nf4, computing in bfloat16."""
    from core.quantization import QuantizeParams, quantize_checkpoint

    folder = tmp_path_factory.mktemp("quantized") / "bnb-nf4"
    params = QuantizeParams(method="bnb-nf4", skip_modules=["model.visual", "lm_head"])
    quantize_checkpoint(tiny_checkpoint, folder, params, "cpu", "bfloat16")
    return folder


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_compute_dtype_rules_a_4bit_checkpoint_saved_in_another(
    backend: ModuleType, nf4_bfloat16_checkpoint: Path, dtype: str
) -> None:
    import bitsandbytes as bnb
    from transformers import AutoProcessor

    saved = json.loads((nf4_bfloat16_checkpoint / "config.json").read_text())["quantization_config"]
    assert saved["bnb_4bit_compute_dtype"] == "bfloat16"

    model = backend.load_model(nf4_bfloat16_checkpoint, "cpu", dtype)

    wanted = getattr(torch, dtype)
    packed = [module for module in model.modules() if isinstance(module, bnb.nn.Linear4bit)]
    assert packed and {module.compute_dtype for module in packed} == {wanted}
    assert {p.dtype for p in model.parameters() if p.is_floating_point()} == {wanted}
    # The vision tower (kept unquantized, saved in bfloat16) and the 4-bit text layers must work together.
    processor = AutoProcessor.from_pretrained(nf4_bfloat16_checkpoint)
    sample = shapes.sample(7, 0)
    conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": sample.question}]}]
    prompt = processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
    inputs = processor(text=[prompt], images=[sample.image.convert("RGB")], return_tensors="pt")
    with torch.inference_mode():
        output = model.generate(**inputs, max_new_tokens=2, do_sample=False)
    assert output.shape[1] > inputs["input_ids"].shape[1]


def test_compute_dtype_rules_a_plain_checkpoint(backend: ModuleType, tiny_checkpoint: Path) -> None:
    model = backend.load_model(tiny_checkpoint, "cpu", "bfloat16")

    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
