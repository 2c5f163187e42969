"""Triton Python backend for a Qwen3-VL chat model: decoupled, one batched ``generate`` per ``execute``.

The package stage copies this file into every version folder, next to the weights it loads. The
model's ``config.pbtxt`` is the contract: tensor types and shapes, every generation default and every
per-request limit come from ``args["model_config"]``; this file only knows what each name means.

Streaming: the model is decoupled (``model_transaction_policy { decoupled: true }``). Requests that
arrive together are generated in one batched ``generate`` call; after every decoding step each
request gets a response with the text its new token added (held back while it could still turn
out to be a stop sequence or half a character), and its last response carries ``finish_reason``
and the ``TRITONSERVER_RESPONSE_COMPLETE_FINAL`` flag. A request whose client went away
(``request.is_cancelled()``) stops generating at the next step; a row that finished early stops
receiving and is released at once, while the others go on.
"""

from __future__ import annotations

import base64
import binascii
import copy
import gc
import io
import json
import logging
import math
import secrets
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import triton_python_backend_utils as pb_utils
from PIL import Image, UnidentifiedImageError
from transformers import (
    AutoConfig,
    AutoModelForImageTextToText,
    AutoProcessor,
    GenerationConfig,
    LogitsProcessor,
    LogitsProcessorList,
    StoppingCriteria,
    StoppingCriteriaList,
)

# What each tensor and parameter means; their types, shapes and values live in config.pbtxt.
_MESSAGES, _MAX_TOKENS, _TEMPERATURE, _TOP_P_INPUT = "messages", "max_tokens", "temperature", "top_p"
_SEED, _STOP, _PRESENCE, _FREQUENCY = "seed", "stop", "presence_penalty", "frequency_penalty"
_LOGIT_BIAS, _LOGPROBS, _TOP_LOGPROBS, _RESPONSE_FORMAT = "logit_bias", "logprobs", "top_logprobs", "response_format"
_TEXT, _PROMPT_TOKENS, _COMPLETION_TOKENS, _MODEL_VERSION = (
    "text",
    "prompt_tokens",
    "completion_tokens",
    "model_version",
)
_FINISH_REASON, _TOKEN_LOGPROBS = "finish_reason", "token_logprobs"
_INPUTS = (
    _MESSAGES,
    _MAX_TOKENS,
    _TEMPERATURE,
    _TOP_P_INPUT,
    _SEED,
    _STOP,
    _PRESENCE,
    _FREQUENCY,
    _LOGIT_BIAS,
    _LOGPROBS,
    _TOP_LOGPROBS,
    _RESPONSE_FORMAT,
)
_OUTPUTS = (_TEXT, _PROMPT_TOKENS, _COMPLETION_TOKENS, _MODEL_VERSION, _FINISH_REASON, _TOKEN_LOGPROBS)
_MAX_NEW_TOKENS, _DEFAULT_TEMPERATURE, _TOP_P, _MAX_HISTORY = "MAX_NEW_TOKENS", "TEMPERATURE", "TOP_P", "MAX_HISTORY"
_MAX_IMAGES, _MAX_IMAGE_PIXELS, _MAX_PROMPT_TOKENS = "MAX_IMAGES", "MAX_IMAGE_PIXELS", "MAX_PROMPT_TOKENS"
_COMPUTE_DTYPE = "COMPUTE_DTYPE"
_IMAGE_FORMATS = "IMAGE_FORMATS"
#: Every ``parameters`` key this file reads; core.contract.PARAMETERS renders exactly these.
_PARAMETERS = (
    _MAX_NEW_TOKENS,
    _DEFAULT_TEMPERATURE,
    _TOP_P,
    _MAX_HISTORY,
    _MAX_IMAGES,
    _MAX_IMAGE_PIXELS,
    _MAX_PROMPT_TOKENS,
    _COMPUTE_DTYPE,
    _IMAGE_FORMATS,
)
# Keys the Python backend itself reads from the same ``parameters`` map; they may sit next to ours.
_BACKEND_PARAMETERS = ("EXECUTION_ENV_PATH", "FORCE_CPU_ONLY_INPUT_TENSORS")
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_ROLES = ("system", "user", "assistant")
#: Temperatures below this sample greedily (see ``_Decoder``).
_GREEDY_BELOW = 1e-5
# OpenAI's own limits on these request fields; anything beyond is refused by name.
_MAX_STOPS, _MAX_STOP_CHARS, _MAX_TOP_LOGPROBS, _MAX_LOGIT_BIAS, _PENALTY = 4, 256, 20, 300, 2.0
_FINISH_STOP, _FINISH_LENGTH = "stop", "length"
#: The start of every message of a failure that is this file's, not the request's (core.contract.INTERNAL_ERROR).
_INTERNAL = "internal error"


def _byte_alphabet() -> dict[str, int]:
    """GPT-2's byte-level BPE alphabet, character -> byte: printable bytes as themselves, the rest from U+0100."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("\xa1"), ord("\xac") + 1), *range(ord("\xae"), 256)]
    alphabet = {chr(byte): byte for byte in printable}
    extra = 0
    for byte in range(256):
        if byte not in printable:
            alphabet[chr(256 + extra)] = byte
            extra += 1
    return alphabet


_BYTE_OF = _byte_alphabet()


class BadRequestError(ValueError):
    """A request the client has to fix; answered with INVALID_ARG (HTTP 400)."""


@dataclass(frozen=True)
class Limits:
    """What one request may ask for (config.pbtxt ``parameters``); each is refused by name."""

    max_new_tokens: int
    max_images: int
    max_image_pixels: int
    max_prompt_tokens: int


@dataclass(frozen=True)
class Sampling:
    """How one request picks its tokens (every field validated; defaults from config.pbtxt)."""

    temperature: float
    top_p: float
    seed: int
    stop: tuple[str, ...] = ()
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[int, float] = field(default_factory=dict)
    logprobs: bool = False
    top_logprobs: int = 0
    #: An llguidance grammar the answer must match (JSON mode), or None for free text.
    grammar: str | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature < _GREEDY_BELOW


@dataclass(frozen=True)
class Prepared:
    """One request, validated and rendered to a prompt."""

    prompt: str
    images: list[Image.Image]
    max_tokens: int
    sampling: Sampling


def truncate_history(messages: list[dict[str, Any]], max_history: int) -> list[dict[str, Any]]:
    """Keep a leading system message, the last ``max_history`` prior turns and the current message.

    A turn is a user message with the replies that follow it; older turns go first.
    """
    system = messages[:1] if messages and messages[0]["role"] == "system" else []
    prior, current = messages[len(system) : -1], messages[-1:]
    starts = [i for i, message in enumerate(prior) if i == 0 or message["role"] == "user"]
    if len(starts) > max_history:
        prior = prior[starts[len(starts) - max_history] :] if max_history > 0 else []
    return system + prior + current


def parse_messages(raw: bytes) -> list[dict[str, Any]]:
    """Decode and check the ``messages`` JSON; raise ``BadRequestError`` naming what is wrong."""
    try:
        messages = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadRequestError(f"'{_MESSAGES}' is not UTF-8 JSON: {exc}") from exc
    if not isinstance(messages, list) or not messages:
        raise BadRequestError(f"'{_MESSAGES}' must be a non-empty JSON list of chat messages")
    for index, message in enumerate(messages):
        where = f"message {index}"
        if not isinstance(message, dict) or message.get("role") not in _ROLES:
            raise BadRequestError(f"{where}: needs a 'role', one of {', '.join(_ROLES)}")
        if message["role"] == "system" and index != 0:
            raise BadRequestError(f"{where}: a system message may only come first")
        content = message.get("content")
        if isinstance(content, str):
            continue
        if not isinstance(content, list) or not content:
            raise BadRequestError(f"{where}: 'content' must be a string or a non-empty list of parts")
        for number, part in enumerate(content):
            _check_part(part, f"{where} part {number}")
    if messages[-1]["role"] != "user":
        raise BadRequestError(f"the last message must come from the user, not {messages[-1]['role']!r}")
    return messages


def _check_part(part: Any, where: str) -> None:
    kind = part.get("type") if isinstance(part, dict) else None
    if kind == "text":
        if not isinstance(part.get("text"), str):
            raise BadRequestError(f"{where}: a text part needs a string 'text'")
    elif kind == "image_url":
        url = part.get("image_url", {}).get("url") if isinstance(part.get("image_url"), dict) else None
        if not isinstance(url, str):
            raise BadRequestError(f"{where}: an image_url part needs {{'image_url': {{'url': 'data:image/...'}}}}")
    else:
        raise BadRequestError(f"{where}: unsupported part type {kind!r}; use 'text' or 'image_url'")


def count_images(messages: list[dict[str, Any]]) -> int:
    """Image parts in the conversation (checked against MAX_IMAGES before any is decoded)."""
    return sum(
        1
        for message in messages
        if isinstance(message["content"], list)
        for part in message["content"]
        if part["type"] == "image_url"
    )


def decode_image(url: str, where: str, max_pixels: int, formats: tuple[str, ...]) -> Image.Image:
    """A ``data:image/...;base64,`` URI as an RGB image; remote URLs are refused, not fetched.

    The pixel count an image declares in its header is checked before a single pixel is decoded,
    so a small file that unpacks to gigabytes (a decompression bomb) costs nothing.
    """
    header, sep, payload = url.partition(",")
    if not (url.startswith("data:image/") and sep and header.endswith(";base64")):
        raise BadRequestError(f"{where}: images must be base64 data URIs (data:image/png;base64,...), got {url[:40]!r}")
    try:
        data = base64.b64decode(payload, validate=True)
        with warnings.catch_warnings():
            # PIL's own, much higher, bomb threshold would warn; MAX_IMAGE_PIXELS is the rule here.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=formats)
    except Image.DecompressionBombError as exc:
        raise BadRequestError(f"{where}: the image is over {_MAX_IMAGE_PIXELS}={max_pixels} ({exc})") from exc
    except (binascii.Error, UnidentifiedImageError, OSError, ValueError) as exc:
        raise BadRequestError(f"{where}: the data URI is not a readable image: {exc}") from exc
    width, height = image.size
    if width * height > max_pixels:
        raise BadRequestError(
            f"{where}: the image is {width}x{height} ({width * height} pixels), over {_MAX_IMAGE_PIXELS}={max_pixels}"
        )
    try:
        image.load()
    except (OSError, ValueError) as exc:
        raise BadRequestError(f"{where}: the data URI is not a readable image: {exc}") from exc
    return image.convert("RGB")


def to_template(
    messages: list[dict[str, Any]], max_pixels: int, formats: tuple[str, ...]
) -> tuple[list[dict[str, Any]], list[Image.Image]]:
    """Messages for the chat template (images become placeholders) and the images in prompt order."""
    rendered: list[dict[str, Any]] = []
    images: list[Image.Image] = []
    for index, message in enumerate(messages):
        content = message["content"]
        if isinstance(content, list):
            parts: list[dict[str, Any]] = []
            for number, part in enumerate(content):
                if part["type"] == "image_url":
                    url = part["image_url"]["url"]
                    images.append(decode_image(url, f"message {index} part {number}", max_pixels, formats))
                    parts.append({"type": "image"})
                else:
                    parts.append({"type": "text", "text": part["text"]})
            content = parts
        rendered.append({"role": message["role"], "content": content})
    return rendered, images


def prompt_length(processor: Any, prompt: str, images: list[Image.Image]) -> int:
    """Tokens the processor will feed the model: the text's, with each image placeholder expanded.

    Counted from the image sizes alone (what the processor resizes them to), without processing pixels.
    """
    image_processor = processor.image_processor
    if images and not hasattr(image_processor, "get_number_of_image_patches"):
        # An image processor that cannot tell from sizes alone: let the processor expand the prompt.
        return len(processor(text=[prompt], images=images)["input_ids"][0])
    length = len(processor.tokenizer(prompt)["input_ids"])
    for image in images:
        patches = image_processor.get_number_of_image_patches(image.height, image.width, {})
        # The prompt holds one placeholder token per image; the processor repeats it once per merged patch.
        length += patches // image_processor.merge_size**2 - 1
    return length


class _Decoder(LogitsProcessor):
    """Picks every row's next token itself, so one ``generate`` serves each request's own sampling.

    Per row: ``logit_bias``, presence and frequency penalties (over the tokens it generated so
    far), the JSON grammar's allowed tokens, then greedy or temperature + top-p sampling from the
    row's own seeded generator (the same seed gives the same answer whatever else is in the batch).
    It returns scores that are ``-inf`` except for the chosen token, so ``generate`` runs greedy and
    takes exactly that token. Log-probabilities are the model's own (before penalties, biases, the
    grammar and temperature), recorded for the rows that asked for them.
    """

    def __init__(self, rows: list[_Row], prompt_length: int, vocab_size: int, device: torch.device) -> None:
        self.rows = rows
        self.prompt_length = prompt_length
        self.generators = [None if row.sampling.greedy else _generator(row.sampling.seed, device) for row in rows]
        samplings = [row.sampling for row in rows]
        self.bias = None
        if any(s.logit_bias for s in samplings):
            self.bias = torch.zeros(len(rows), vocab_size, device=device)
            for index, sampling in enumerate(samplings):
                for token, value in sampling.logit_bias.items():
                    self.bias[index, token] = value
        self.presence = torch.tensor([[s.presence_penalty] for s in samplings], device=device)
        self.frequency = torch.tensor([[s.frequency_penalty] for s in samplings], device=device)
        self.penalized = any(s.presence_penalty or s.frequency_penalty for s in samplings)
        self.temperature = torch.tensor([[max(s.temperature, _GREEDY_BELOW)] for s in samplings], device=device)
        self.top_p = torch.tensor([[s.top_p] for s in samplings], device=device)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        raw = scores.float()
        logits = raw.clone()
        if self.bias is not None:
            logits[:, : self.bias.shape[1]] += self.bias
        if self.penalized and input_ids.shape[1] > self.prompt_length:
            generated = input_ids[:, self.prompt_length :]
            counts = torch.zeros_like(logits).scatter_add_(1, generated, torch.ones_like(generated, dtype=logits.dtype))
            logits -= self.frequency * counts + self.presence * (counts > 0).to(logits.dtype)
        for index, row in enumerate(self.rows):
            if row.matcher is not None and not row.done:
                logits[index] = logits[index].masked_fill(~row.allowed_tokens(logits.shape[1]), -math.inf)
        chosen = logits.argmax(dim=-1)
        sampled = [index for index, generator in enumerate(self.generators) if generator is not None]
        if sampled:
            probabilities = _top_p(logits[sampled] / self.temperature[sampled], self.top_p[sampled])
            for position, index in enumerate(sampled):
                if not self.rows[index].done:
                    draw = torch.multinomial(probabilities[position], 1, generator=self.generators[index])
                    chosen[index] = draw[0]
        if any(row.sampling.logprobs for row in self.rows):
            log_probabilities = torch.log_softmax(raw, dim=-1)
            for index, row in enumerate(self.rows):
                if row.sampling.logprobs and not row.done:
                    row.note_logprobs(log_probabilities[index], int(chosen[index]))
        return torch.full_like(scores, -math.inf).scatter(1, chosen.unsqueeze(1), 0.0)  # type: ignore[return-value]


def _top_p(scaled: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Probabilities with each row cut to its smallest set of tokens whose mass reaches ``top_p``."""
    ordered, order = torch.sort(scaled, descending=True, dim=-1)
    probabilities = ordered.softmax(dim=-1)
    # Drop a token once the mass before it already reaches top_p (the first one always stays).
    drop = (probabilities.cumsum(dim=-1) - probabilities) >= top_p
    ordered = ordered.masked_fill(drop, -math.inf)
    kept = torch.full_like(scaled, -math.inf).scatter(1, order, ordered)
    return kept.softmax(dim=-1)


def _generator(seed: int, device: torch.device) -> torch.Generator:
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    return generator


class _Row:
    """One request while it is generated: its tokens, the text it has sent, its response sender.

    The text sent is always a prefix of the final answer (``decode(tokens).strip()`` cut before a
    stop sequence): trailing whitespace, a trailing replacement character (half of a multi-byte
    character) and a tail that may be the start of a stop sequence are held back until the next
    token settles them.
    """

    def __init__(self, owner: TritonPythonModel, request: Any, sender: Any) -> None:
        self.owner = owner
        self.request = request
        self.sender = sender
        self.prepared: Prepared | None = None
        self.sampling = Sampling(temperature=0.0, top_p=1.0, seed=0)
        self.prompt_tokens = 0
        self.responses = 0
        self.closed = False
        self.cancelled = False
        self.restart()

    def start(self, prepared: Prepared) -> None:
        self.prepared, self.sampling = prepared, prepared.sampling
        self.restart()

    def restart(self) -> None:
        """Forget any tokens (a failed batch's row about to be generated alone; nothing was sent yet)."""
        self.tokens: list[int] = []
        self.sent = ""
        self.finish: str | None = None
        self.matcher = self.owner.matcher(self.sampling.grammar) if self.sampling.grammar is not None else None
        self._pending_logprobs: list[dict[str, Any]] = []
        self._note: dict[str, Any] | None = None
        self._longest_stop = max((len(stop) for stop in self.sampling.stop), default=0)
        self._searched = 0

    @property
    def done(self) -> bool:
        return self.closed or self.finish is not None

    def allowed_tokens(self, vocab_size: int) -> torch.Tensor:
        """The tokens the grammar allows next (the end-of-sequence tokens once it is complete)."""
        assert self.matcher is not None
        mask = torch.frombuffer(bytearray(self.matcher.compute_logit_bias()), dtype=torch.uint8) > 0
        allowed = torch.zeros(vocab_size, dtype=torch.bool)
        allowed[: min(vocab_size, mask.numel())] = mask[:vocab_size]
        if not allowed.any() or self.matcher.is_stopped():
            allowed[list(self.owner.stop_ids)] = True
        return allowed.to(self.owner.device)

    def note_logprobs(self, log_probabilities: torch.Tensor, token: int) -> None:
        """Remember the chosen token's log-probability (and the top alternatives) for its response."""
        entry = self.owner.logprob_entry(token, float(log_probabilities[token]))
        if self.sampling.top_logprobs:
            values, tokens = torch.topk(log_probabilities, self.sampling.top_logprobs)
            entry["top_logprobs"] = [
                self.owner.logprob_entry(int(t), float(v))
                for v, t in zip(values.tolist(), tokens.tolist(), strict=True)
            ]
        else:
            entry["top_logprobs"] = []
        self._note = entry

    def step(self, token: int) -> None:
        """Take the row's new token: stop, cut or extend the answer, and send what is settled."""
        if self.request.is_cancelled():
            self.cancelled = True
            self.owner.log_cancelled(self)
            self.close()
            return
        if token in self.owner.stop_ids:
            self.finish = _FINISH_STOP
        else:
            self.tokens.append(token)
            if self.matcher is not None:
                self.matcher.consume_token(token)
            if self._note is not None:
                self._pending_logprobs.append(self._note)
        self._note = None
        raw = self.owner.decode(self.tokens)
        cut = self._stop_at(raw)
        if cut is not None:
            raw, self.finish = raw[:cut], _FINISH_STOP
            self._drop_logprobs_after(cut)
        elif self.finish is None and self.prepared is not None and len(self.tokens) >= self.prepared.max_tokens:
            self.finish = _FINISH_LENGTH
        elif self.finish is None and self.matcher is not None and self.matcher.is_stopped():
            self.finish = _FINISH_STOP  # the grammar is complete: nothing but the end may follow
        settled = raw.strip() if self.finish is not None else self._settled(raw.lstrip())
        if not settled.startswith(self.sent):
            # A tokenizer whose decode is not prefix-stable: never take back text already sent.
            settled = self.sent
        delta, self.sent = settled[len(self.sent) :], settled
        if self.finish is not None:
            self.send(delta, final=True)
        elif delta:
            self.send(delta)

    def end(self, reason: str) -> None:
        """Finish now (``reason``: why), sending whatever text was still held back."""
        self.finish = reason
        settled = self.owner.decode(self.tokens).strip()
        delta = settled[len(self.sent) :] if settled.startswith(self.sent) else ""
        self.sent = settled if settled.startswith(self.sent) else self.sent
        self.send(delta, final=True)

    def send(self, delta: str, *, final: bool = False) -> None:
        logprobs, self._pending_logprobs = self._pending_logprobs, []
        values = {
            _TEXT: delta.encode("utf-8"),
            _PROMPT_TOKENS: self.prompt_tokens,
            _COMPLETION_TOKENS: len(self.tokens),
            _MODEL_VERSION: self.owner.version.encode("utf-8"),
            _FINISH_REASON: (self.finish or "").encode("utf-8"),
            _TOKEN_LOGPROBS: json.dumps(logprobs).encode("utf-8") if self.sampling.logprobs else b"",
        }
        response = pb_utils.InferenceResponse(
            output_tensors=[
                pb_utils.Tensor(name, np.array([[value]], dtype=self.owner.output_dtypes[name]))
                for name, value in values.items()
            ]
        )
        self.responses += 1
        if final:
            self.closed = True
            self.sender.send(response, flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        else:
            self.sender.send(response)

    def close(self, error: Any = None) -> None:
        """End the request's stream (with ``error`` as its last response, if given); at most once."""
        if self.closed:
            return
        self.closed = True
        final = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
        if error is None:
            self.sender.send(flags=final)
        else:
            self.sender.send(error, flags=final)

    def _stop_at(self, raw: str) -> int | None:
        """Where the first stop sequence starts in ``raw``, searching only text not searched before."""
        if not self.sampling.stop:
            return None
        start = max(self._searched - self._longest_stop + 1, 0)
        self._searched = len(raw)
        found = [index for stop in self.sampling.stop if (index := raw.find(stop, start)) >= 0]
        return min(found) if found else None

    def _settled(self, text: str) -> str:
        """``text`` without what the next token may still change."""
        text = text.rstrip("\ufffd").rstrip()
        for size in range(min(self._longest_stop - 1, len(text)), 0, -1):
            if any(stop.startswith(text[-size:]) for stop in self.sampling.stop):
                return text[:-size].rstrip()
        return text

    def _drop_logprobs_after(self, cut: int) -> None:
        """Forget the log-probabilities of tokens that start at or after ``cut`` (not part of the answer)."""
        decode = self.owner.decode
        kept = sum(1 for index in range(len(self.tokens)) if len(decode(self.tokens[:index])) < cut)
        dropped = len(self.tokens) - kept
        if dropped:
            self._pending_logprobs = self._pending_logprobs[: max(len(self._pending_logprobs) - dropped, 0)]


class _Streams(StoppingCriteria):
    """Called by ``generate`` after every step: hands each live row its new token, reports who is done."""

    def __init__(self, rows: list[_Row]) -> None:
        self.rows = rows

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
        tokens = input_ids[:, -1].tolist()
        for row, token in zip(self.rows, tokens, strict=True):
            if not row.done:
                row.step(int(token))
        return torch.tensor([row.done for row in self.rows], dtype=torch.bool, device=input_ids.device)  # type: ignore[return-value]


def load_model(folder: Path, device: str, dtype: str) -> Any:
    """The checkpoint's model on ``device``, computing in ``dtype`` throughout, quantized or not."""
    config = AutoConfig.from_pretrained(folder)
    quantization = getattr(config, "quantization_config", None)
    if isinstance(quantization, dict) and quantization.get("load_in_4bit"):
        # The saved compute dtype is whatever the quantizing machine used; this instance's is COMPUTE_DTYPE.
        config.quantization_config = {**quantization, "bnb_4bit_compute_dtype": dtype}
    model = AutoModelForImageTextToText.from_pretrained(folder, config=config, device_map=device, dtype=_DTYPES[dtype])
    # A bitsandbytes checkpoint keeps its unquantized modules (vision tower, norms, lm_head) in the dtype
    # it was saved in, whatever `dtype` says: a bfloat16 build served in float32 would mix the two and
    # fail. Packed weights are integer tensors and stay as they are.
    for parameter in model.parameters():
        if parameter.is_floating_point() and parameter.dtype != _DTYPES[dtype]:
            parameter.data = parameter.data.to(_DTYPES[dtype])
    return model


class TritonPythonModel:
    """Loaded once per instance by the Python backend stub."""

    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        self.version = args["model_version"]
        self._check_contract(config)
        # Triton stops checking required inputs once a model declares optional ones; model.py checks.
        self.required_inputs = [tensor["name"] for tensor in config["input"] if not tensor.get("optional", False)]
        self.output_dtypes = {
            output["name"]: pb_utils.triton_string_to_numpy(output["data_type"]) for output in config["output"]
        }
        self._configure(self._parameters(config))

        folder = Path(args["model_repository"]) / self.version
        gpu = args["model_instance_kind"] == "GPU"
        device = f"cuda:{args['model_instance_device_id']}" if gpu else "cpu"
        # bitsandbytes logs a dtype note on every 8-bit matmul on CPU; it would drown the server log.
        logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
        try:
            self.processor = AutoProcessor.from_pretrained(folder)
            self.model = load_model(folder, device, self.compute_dtype)
        except (OSError, ValueError) as exc:
            raise RuntimeError(
                f"version {self.version} cannot load its checkpoint from {folder}: {exc}. "
                "Re-run the package stage for this version."
            ) from exc
        self.model.eval()
        self.device = torch.device(device)
        # Batched generation appends new tokens on the right, so prompts must be padded on the left.
        self.processor.tokenizer.padding_side = "left"
        source = self.model.generation_config
        # Only the stopping tokens come from the checkpoint; sampling settings come from config.pbtxt.
        self.generation = GenerationConfig(
            eos_token_id=source.eos_token_id, pad_token_id=source.pad_token_id, bos_token_id=source.bos_token_id
        )
        stop = source.eos_token_id if isinstance(source.eos_token_id, list) else [source.eos_token_id]
        self.stop_ids = {int(token) for token in stop if token is not None}
        # The width of the model's logits (the tokenizer may know fewer tokens than the head has rows).
        self.vocab_size = int(self.model.config.get_text_config().vocab_size)
        self._grammar_tokenizer, self._grammar_error = self._grammar_support([int(t) for t in stop if t is not None])
        pb_utils.Logger.log_info(
            f"version {self.version} loaded from {folder} on {device} in {self.compute_dtype} "
            f"(quantization: {getattr(self.model.config, 'quantization_config', None) is not None}; {self.limits}; "
            f"JSON mode: {'yes' if self._grammar_tokenizer is not None else 'no, ' + str(self._grammar_error)})"
        )

    def execute(self, requests: list[Any]) -> None:
        """Stream each request's answer through its own response sender; every request ends exactly once.

        A bad request gets its own error (and the rest still run); whatever else goes wrong, every
        stream still gets its final response.
        """
        rows: list[_Row] = []
        try:
            for request in requests:
                row = _Row(self, request, request.get_response_sender())
                rows.append(row)
                self._prepare_or_refuse(row)
            self._generate_isolated([row for row in rows if not row.closed])
        except Exception as exc:  # whatever went wrong, no request may be left without its final response
            pb_utils.Logger.log_error(f"execute failed for a batch of {len(requests)}: {exc!r}")
        finally:
            for row in rows:
                if not row.closed:
                    row.close(
                        _error("the server failed to answer this request; see its log", pb_utils.TritonError.INTERNAL)
                    )
        return None

    def finalize(self) -> None:
        # Drop the weights before the stub exits so a GPU instance frees its memory promptly.
        del self.model
        self._free_memory()

    # -- what _Row asks of its model -------------------------------------------------------------------

    def decode(self, tokens: list[int]) -> str:
        return str(self.processor.tokenizer.decode(tokens, skip_special_tokens=True))

    def logprob_entry(self, token: int, logprob: float) -> dict[str, Any]:
        """One token as OpenAI's ``logprobs.content`` lists it (a log-probability too small for JSON: -9999).

        ``bytes`` are the token's own bytes: a byte-level token holding part of a character (one of the
        three of a CJK character, say) decodes to U+FFFD alone, but its bytes joined with its
        neighbours' rebuild the character, which is what OpenAI's field is for.
        """
        text = self.processor.tokenizer.decode([token])
        return {"token": text, "logprob": max(logprob, -9999.0), "bytes": list(self._token_bytes(token, text))}

    def _token_bytes(self, token: int, text: str) -> bytes:
        piece = self.processor.tokenizer.convert_ids_to_tokens(token)
        if isinstance(piece, str) and piece and all(char in _BYTE_OF for char in piece):
            raw = bytes(_BYTE_OF[char] for char in piece)
            # A byte-level vocabulary (GPT-2's alphabet, as Qwen's): the piece is the bytes, spelled.
            if raw.decode("utf-8", errors="replace") == text:
                return raw
        return text.encode("utf-8")

    def matcher(self, grammar: str) -> Any:
        import llguidance

        return llguidance.LLMatcher(self._grammar_tokenizer, grammar, log_level=0)

    def log_cancelled(self, row: _Row) -> None:
        pb_utils.Logger.log_info(
            f"version {self.version}: a request was cancelled by its client after {len(row.tokens)} of at most "
            f"{row.prepared.max_tokens if row.prepared else 0} tokens; its generation stopped"
        )

    # -- configuration ---------------------------------------------------------------------------------

    def _check_contract(self, config: dict[str, Any]) -> None:
        inputs = {tensor["name"] for tensor in config["input"]}
        outputs = {tensor["name"] for tensor in config["output"]}
        if inputs != set(_INPUTS) or outputs != set(_OUTPUTS):
            raise RuntimeError(
                f"config.pbtxt declares inputs {sorted(inputs)} and outputs {sorted(outputs)} but this model.py "
                f"serves inputs {sorted(_INPUTS)} and outputs {sorted(_OUTPUTS)}; "
                "regenerate config.pbtxt and model.py together with the package stage"
            )
        if not pb_utils.using_decoupled_model_transaction_policy(config):
            raise RuntimeError(
                "this model.py streams its answers: config.pbtxt must set "
                "model_transaction_policy { decoupled: true }; regenerate it with the package stage"
            )

    @staticmethod
    def _parameters(config: dict[str, Any]) -> dict[str, str]:
        """config.pbtxt's ``parameters``: exactly the keys this file reads (plus the backend's own)."""
        values = {key: entry["string_value"] for key, entry in config.get("parameters", {}).items()}
        missing = [key for key in _PARAMETERS if key not in values]
        if missing:
            raise RuntimeError(f"config.pbtxt lacks parameters {missing}; regenerate it with the package stage")
        unknown = sorted(set(values) - set(_PARAMETERS) - set(_BACKEND_PARAMETERS))
        if unknown:
            # A setting this file does not read would be silently ignored (a limit nobody enforces).
            raise RuntimeError(
                f"config.pbtxt sets parameters {unknown} that this model.py does not read; "
                "regenerate config.pbtxt and model.py together with the package stage"
            )
        return values

    def _configure(self, parameters: dict[str, str]) -> None:
        """Generation defaults and per-request limits from config.pbtxt; a bad value fails the load by name."""

        def number(key: str, kind: type[int] | type[float], low: float) -> Any:
            try:
                value = kind(parameters[key])
            except ValueError:
                value = None
            if value is None or not math.isfinite(value) or value < low:
                raise RuntimeError(f"config.pbtxt parameter {key}={parameters[key]!r} must be a number >= {low}")
            return value

        self.temperature = number(_DEFAULT_TEMPERATURE, float, 0.0)
        self.top_p = number(_TOP_P, float, 0.0)
        self.max_history = number(_MAX_HISTORY, int, 0)
        self.limits = Limits(
            max_new_tokens=number(_MAX_NEW_TOKENS, int, 1),
            max_images=number(_MAX_IMAGES, int, 0),
            max_image_pixels=number(_MAX_IMAGE_PIXELS, int, 1),
            max_prompt_tokens=number(_MAX_PROMPT_TOKENS, int, 1),
        )
        self.image_formats = tuple(parameters[_IMAGE_FORMATS].split(","))
        if not set(self.image_formats) <= set(Image.registered_extensions().values()):
            raise RuntimeError(
                f"config.pbtxt parameter {_IMAGE_FORMATS}={parameters[_IMAGE_FORMATS]!r} names unknown formats"
            )
        self.compute_dtype = parameters[_COMPUTE_DTYPE]
        if self.compute_dtype not in _DTYPES:
            raise RuntimeError(
                f"config.pbtxt parameter {_COMPUTE_DTYPE}={self.compute_dtype!r} must be one of {sorted(_DTYPES)}"
            )

    def _grammar_support(self, eos: list[int]) -> tuple[Any, str | None]:
        """llguidance's view of the tokenizer (JSON mode), or None and why this tokenizer cannot have one."""
        try:
            import llguidance.hf

            return llguidance.hf.from_tokenizer(self.processor.tokenizer, n_vocab=self.vocab_size, eos_token=eos), None
        except Exception as exc:  # any failure only means: no constrained decoding for this build
            return None, f"{type(exc).__name__}: {exc}"

    # -- one request -----------------------------------------------------------------------------------

    def _prepare_or_refuse(self, row: _Row) -> None:
        """Start ``row`` with its prepared request, or end it with the error it gets."""
        try:
            if row.request.is_cancelled():
                row.close()  # its client is gone before anything ran
                return
            row.start(self._prepare(row.request))
        except BadRequestError as exc:
            row.close(_error(str(exc), pb_utils.TritonError.INVALID_ARG))
        except Exception as exc:  # a bug met by one request must not fail its batch neighbours
            pb_utils.Logger.log_error(f"preparing a request failed: {exc!r}")
            row.close(_error(f"the request could not be prepared: {exc}", pb_utils.TritonError.INTERNAL))

    def _prepare(self, request: Any) -> Prepared:
        missing = [name for name in self.required_inputs if pb_utils.get_input_tensor_by_name(request, name) is None]
        if missing:
            raise BadRequestError(f"required input {', '.join(repr(name) for name in missing)} is missing")
        raw = pb_utils.get_input_tensor_by_name(request, _MESSAGES).as_numpy().reshape(-1)
        if raw.size != 1:
            raise BadRequestError(f"send one conversation per request (got {raw.size}); Triton batches requests itself")
        limits = self.limits
        max_tokens = self._scalar(request, _MAX_TOKENS, limits.max_new_tokens)
        if not (1 <= max_tokens <= limits.max_new_tokens) or max_tokens != int(max_tokens):
            raise BadRequestError(
                f"'{_MAX_TOKENS}' must be a whole number from 1 to {_MAX_NEW_TOKENS}={limits.max_new_tokens}, "
                f"got {max_tokens:g}"
            )
        sampling = self._sampling(request)
        messages = truncate_history(parse_messages(bytes(raw[0])), self.max_history)
        images = count_images(messages)
        if images > limits.max_images:
            raise BadRequestError(
                f"the conversation holds {images} images (after dropping old turns), over "
                f"{_MAX_IMAGES}={limits.max_images}; send fewer images"
            )
        rendered, decoded = to_template(messages, limits.max_image_pixels, self.image_formats)
        try:
            prompt = self.processor.apply_chat_template(rendered, add_generation_prompt=True, tokenize=False)
        except Exception as exc:  # the template is checkpoint data: any failure is about this request
            raise BadRequestError(f"the chat template rejects these messages: {exc}") from exc
        length = prompt_length(self.processor, prompt, decoded)
        if length > limits.max_prompt_tokens:
            raise BadRequestError(
                f"the prompt is {length} tokens, over {_MAX_PROMPT_TOKENS}={limits.max_prompt_tokens}; "
                "shorten the conversation or send smaller images"
            )
        return Prepared(prompt, decoded, int(max_tokens), sampling)

    def _sampling(self, request: Any) -> Sampling:
        """Every sampling input of the request, checked by name; config.pbtxt's defaults where absent."""
        temperature = self._scalar(request, _TEMPERATURE, self.temperature)
        if temperature < 0:
            raise BadRequestError(f"'{_TEMPERATURE}' must be 0 (greedy) or more, got {temperature}")
        top_p = self._scalar(request, _TOP_P_INPUT, self.top_p)
        if not 0 < top_p <= 1:
            raise BadRequestError(f"'{_TOP_P_INPUT}' must be more than 0 and at most 1, got {top_p}")
        penalties = {}
        for name in (_PRESENCE, _FREQUENCY):
            penalties[name] = self._scalar(request, name, 0.0)
            if abs(penalties[name]) > _PENALTY:
                raise BadRequestError(f"'{name}' must be from -{_PENALTY:g} to {_PENALTY:g}, got {penalties[name]}")
        seed = self._scalar(request, _SEED, None, integer=True)
        logprobs = bool(self._scalar(request, _LOGPROBS, 0.0))
        top_logprobs = self._scalar(request, _TOP_LOGPROBS, 0.0, integer=True)
        if not 0 <= top_logprobs <= _MAX_TOP_LOGPROBS:
            raise BadRequestError(f"'{_TOP_LOGPROBS}' must be from 0 to {_MAX_TOP_LOGPROBS}, got {top_logprobs}")
        if top_logprobs and not logprobs:
            raise BadRequestError(f"'{_TOP_LOGPROBS}' needs '{_LOGPROBS}' to be true")
        return Sampling(
            temperature=temperature,
            top_p=top_p,
            # Unseeded requests still get a seed of their own, so batch neighbours never share randomness.
            seed=secrets.randbits(63) if seed is None else int(seed),
            stop=self._stops(request),
            presence_penalty=penalties[_PRESENCE],
            frequency_penalty=penalties[_FREQUENCY],
            logit_bias=self._logit_bias(request),
            logprobs=logprobs,
            top_logprobs=int(top_logprobs),
            grammar=self._grammar(request),
        )

    @staticmethod
    def _scalar(request: Any, name: str, default: Any, *, integer: bool = False) -> Any:
        tensor = pb_utils.get_input_tensor_by_name(request, name)
        if tensor is None:
            return default
        values = tensor.as_numpy().reshape(-1)
        if values.size != 1 or (values.dtype.kind == "f" and not math.isfinite(float(values[0]))):
            raise BadRequestError(f"'{name}' must hold one finite number")
        value = values[0]
        if integer:
            return int(value)
        return float(value)

    @staticmethod
    def _document(request: Any, name: str) -> Any:
        """A JSON-valued string input, parsed (None when absent or empty)."""
        tensor = pb_utils.get_input_tensor_by_name(request, name)
        if tensor is None:
            return None
        values = tensor.as_numpy().reshape(-1)
        if values.size != 1:
            raise BadRequestError(f"'{name}' must hold one JSON document")
        raw = bytes(values[0])
        if not raw:
            return None
        try:
            return json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise BadRequestError(f"'{name}' is not UTF-8 JSON: {exc}") from exc

    def _stops(self, request: Any) -> tuple[str, ...]:
        value = self._document(request, _STOP)
        if value is None:
            return ()
        stops = [value] if isinstance(value, str) else value
        if (
            not isinstance(stops, list)
            or len(stops) > _MAX_STOPS
            or not all(isinstance(stop, str) and 0 < len(stop) <= _MAX_STOP_CHARS for stop in stops)
        ):
            raise BadRequestError(
                f"'{_STOP}' must be a string or a list of up to {_MAX_STOPS} non-empty strings of at most "
                f"{_MAX_STOP_CHARS} characters"
            )
        return tuple(stops)

    def _logit_bias(self, request: Any) -> dict[int, float]:
        value = self._document(request, _LOGIT_BIAS)
        if value is None:
            return {}
        rule = (
            f"'{_LOGIT_BIAS}' must map up to {_MAX_LOGIT_BIAS} token ids (0 to {self.vocab_size - 1}) "
            "to biases from -100 to 100"
        )
        if not isinstance(value, dict) or len(value) > _MAX_LOGIT_BIAS:
            raise BadRequestError(rule)
        bias: dict[int, float] = {}
        for key, amount in value.items():
            token = int(key) if isinstance(key, str) and key.isascii() and key.isdigit() else -1
            valid = isinstance(amount, int | float) and not isinstance(amount, bool) and math.isfinite(amount)
            if not 0 <= token < self.vocab_size or not valid or abs(amount) > 100:
                raise BadRequestError(f"{rule}; got {key!r}: {amount!r}")
            bias[token] = float(amount)
        return bias

    def _grammar(self, request: Any) -> str | None:
        """The llguidance grammar ``response_format`` asks for (None for free text)."""
        value = self._document(request, _RESPONSE_FORMAT)
        kind = value.get("type") if isinstance(value, dict) else value
        if value is None or kind == "text":
            return None
        if kind == "json_object":
            schema: Any = {"type": "object"}
        elif kind == "json_schema":
            spec = value.get("json_schema")
            schema = spec.get("schema") if isinstance(spec, dict) else None
            if not isinstance(schema, dict):
                raise BadRequestError(
                    f"'{_RESPONSE_FORMAT}' json_schema needs {{'json_schema': {{'schema': {{...}}}}}}"
                )
        else:
            raise BadRequestError(
                f"'{_RESPONSE_FORMAT}' type must be 'text', 'json_object' or 'json_schema', got {kind!r}"
            )
        if self._grammar_tokenizer is None:
            raise BadRequestError(
                f"'{_RESPONSE_FORMAT}' {kind} is not supported by version {self.version}: its tokenizer cannot drive "
                f"constrained decoding ({self._grammar_error})"
            )
        import llguidance

        try:
            # Compact JSON: free whitespace lets a small model wander in blanks until its token limit.
            grammar = str(
                llguidance.LLMatcher.grammar_from_json_schema(schema, defaults={"whitespace_flexible": False})
            )
        except ValueError as exc:
            raise BadRequestError(f"'{_RESPONSE_FORMAT}' holds a schema that is not valid JSON: {exc}") from exc
        problem = llguidance.LLMatcher.validate_grammar(grammar, self._grammar_tokenizer)
        if problem:
            raise BadRequestError(f"'{_RESPONSE_FORMAT}' holds a schema this server cannot enforce: {problem}")
        return grammar

    # -- generation ------------------------------------------------------------------------------------

    def _generate_isolated(self, rows: list[_Row]) -> None:
        """Stream the batch; if it fails, free memory and retry one by one the rows that sent nothing yet.

        So an out-of-memory batch still answers every request, and only a culprit gets the error. A
        row that already streamed part of its answer cannot start again: it ends with the error.
        """
        if not rows:
            return
        try:
            self._generate(rows)
            return
        except Exception as exc:  # any failure, even an unforeseen one, must still answer each request
            cause = f"{type(exc).__name__}: {exc}"
        # Outside the except block: the traceback (and the tensors its frames hold) is gone by now.
        self._free_memory()
        for row in rows:
            if row.responses and not row.closed:
                row.close(
                    _error(f"generation failed after the answer had begun: {cause}", pb_utils.TritonError.INTERNAL)
                )
        fresh = [row for row in rows if not row.closed]
        if len(rows) == 1:
            pb_utils.Logger.log_error(f"generate failed for a single request: {cause}")
            for row in fresh:
                row.close(_error(f"generation failed: {cause}", pb_utils.TritonError.INTERNAL))
            return
        pb_utils.Logger.log_warn(
            f"generate failed for a batch of {len(rows)} requests ({cause}); memory freed, "
            "answering each request on its own"
        )
        for row in fresh:
            row.restart()
            self._generate_isolated([row])

    def _free_memory(self) -> None:
        gc.collect()
        if getattr(self, "device", None) is not None and self.device.type == "cuda":
            torch.cuda.empty_cache()

    @torch.inference_mode()
    def _generate(self, rows: list[_Row]) -> None:
        batch = [row.prepared for row in rows if row.prepared is not None]
        images = [image for prepared in batch for image in prepared.images]
        inputs = self.processor(
            text=[prepared.prompt for prepared in batch], images=images or None, padding=True, return_tensors="pt"
        ).to(self.device)
        for row, length in zip(rows, inputs["attention_mask"].sum(dim=1).tolist(), strict=True):
            row.prompt_tokens = int(length)
        generation = copy.deepcopy(self.generation)
        # _Decoder picks every token itself (sampling included), so generate only takes its pick.
        generation.update(max_new_tokens=max(prepared.max_tokens for prepared in batch), do_sample=False)
        decoder = _Decoder(rows, inputs["input_ids"].shape[1], self.vocab_size, self.device)
        self.model.generate(
            **inputs,
            generation_config=generation,
            logits_processor=LogitsProcessorList([decoder]),
            stopping_criteria=StoppingCriteriaList([_Streams(rows)]),
        )
        for row in rows:
            if not row.done:  # generate stopped for a reason of its own (the model's length limit)
                row.end(_FINISH_LENGTH)


def _error(message: str, code: Any) -> Any:
    if code == pb_utils.TritonError.INTERNAL:
        message = f"{_INTERNAL}: {message}"
    return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(message, code))
