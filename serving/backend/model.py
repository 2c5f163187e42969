"""Triton Python backend for a Qwen3-VL chat model: one batched ``generate`` per ``execute``.

The package stage copies this file into every version folder, next to the weights it loads. The
model's ``config.pbtxt`` is the contract: tensor types and shapes, every generation default and every
per-request limit come from ``args["model_config"]``; this file only knows what each name means.
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
import warnings
from dataclasses import dataclass
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
)

# What each tensor and parameter means; their types, shapes and values live in config.pbtxt.
_MESSAGES, _MAX_TOKENS, _TEMPERATURE = "messages", "max_tokens", "temperature"
_TEXT, _PROMPT_TOKENS, _COMPLETION_TOKENS, _MODEL_VERSION = (
    "text",
    "prompt_tokens",
    "completion_tokens",
    "model_version",
)
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
#: Temperatures below this sample greedily (see ``_PerRowSampling``).
_GREEDY_BELOW = 1e-5


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
class Prepared:
    """One request, validated and rendered to a prompt."""

    prompt: str
    images: list[Image.Image]
    max_tokens: int
    temperature: float


@dataclass(frozen=True)
class Answer:
    text: str
    prompt_tokens: int
    completion_tokens: int


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


class _PerRowSampling(LogitsProcessor):
    """Temperature and top-p per row, so one ``generate`` serves greedy and sampled requests alike."""

    def __init__(self, temperatures: list[float], top_p: float) -> None:
        self.temperatures = torch.tensor(temperatures, dtype=torch.float32)
        self.top_p = top_p

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        temperatures = self.temperatures.to(scores.device)
        # A temperature this small is greedy in all but exact ties, and dividing by it can overflow
        # float32 (1e-40: inf logits, NaN probabilities, a failed generate): take the argmax instead.
        greedy = (temperatures < _GREEDY_BELOW).unsqueeze(1)
        scaled = scores / torch.where(greedy, torch.ones_like(temperatures.unsqueeze(1)), temperatures.unsqueeze(1))
        ordered, order = torch.sort(scaled, descending=True, dim=-1)
        probabilities = ordered.softmax(dim=-1)
        # Drop a token once the mass before it already reaches top_p (the first one always stays).
        drop = (probabilities.cumsum(dim=-1) - probabilities) >= self.top_p
        ordered = ordered.masked_fill(drop, -math.inf)
        sampled = torch.full_like(scaled, -math.inf).scatter(1, order, ordered)
        argmax_only = torch.full_like(scores, -math.inf).scatter(1, scores.argmax(dim=-1, keepdim=True), 0.0)
        return torch.where(greedy, argmax_only, sampled)  # type: ignore[return-value]


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
        pb_utils.Logger.log_info(
            f"version {self.version} loaded from {folder} on {device} in {self.compute_dtype} "
            f"(quantization: {getattr(self.model.config, 'quantization_config', None) is not None}; {self.limits})"
        )

    def execute(self, requests: list[Any]) -> list[Any]:
        """Exactly one response per request; a bad request gets its own error and the rest still run."""
        responses: list[Any] = [None] * len(requests)
        try:
            ready: list[tuple[int, Prepared]] = []
            for index, request in enumerate(requests):
                prepared = self._prepare_or_refuse(request)
                if isinstance(prepared, Prepared):
                    ready.append((index, prepared))
                else:
                    responses[index] = prepared
            outcomes = self._generate_isolated([prepared for _, prepared in ready])
            for (index, _), outcome in zip(ready, outcomes, strict=True):
                responses[index] = self._respond(outcome)
        except Exception as exc:  # whatever went wrong, no request may be left without its one response
            pb_utils.Logger.log_error(f"execute failed for a batch of {len(requests)}: {exc!r}")
        return [
            response
            if response is not None
            else _error("the server failed to answer this request; see its log", pb_utils.TritonError.INTERNAL)
            for response in responses
        ]

    def finalize(self) -> None:
        # Drop the weights before the stub exits so a GPU instance frees its memory promptly.
        del self.model
        self._free_memory()

    def _check_contract(self, config: dict[str, Any]) -> None:
        declared = {tensor["name"] for tensor in config["input"]} | {tensor["name"] for tensor in config["output"]}
        needed = {_MESSAGES, _MAX_TOKENS, _TEMPERATURE, _TEXT, _PROMPT_TOKENS, _COMPLETION_TOKENS, _MODEL_VERSION}
        if declared != needed:
            raise RuntimeError(
                f"config.pbtxt declares tensors {sorted(declared)} but this model.py serves {sorted(needed)}; "
                "regenerate config.pbtxt and model.py together with the package stage"
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

    def _prepare_or_refuse(self, request: Any) -> Prepared | Any:
        """The prepared request, or the error response it gets."""
        try:
            return self._prepare(request)
        except BadRequestError as exc:
            return _error(str(exc), pb_utils.TritonError.INVALID_ARG)
        except Exception as exc:  # a bug met by one request must not fail its batch neighbours
            pb_utils.Logger.log_error(f"preparing a request failed: {exc!r}")
            return _error(f"the request could not be prepared: {exc}", pb_utils.TritonError.INTERNAL)

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
        temperature = self._scalar(request, _TEMPERATURE, self.temperature)
        if temperature < 0:
            raise BadRequestError(f"'{_TEMPERATURE}' must be 0 (greedy) or more, got {temperature}")
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
        return Prepared(prompt, decoded, int(max_tokens), temperature)

    @staticmethod
    def _scalar(request: Any, name: str, default: float) -> float:
        tensor = pb_utils.get_input_tensor_by_name(request, name)
        if tensor is None:
            return default
        values = tensor.as_numpy().reshape(-1)
        if values.size != 1 or not math.isfinite(float(values[0])):
            raise BadRequestError(f"'{name}' must hold one finite number")
        return float(values[0])

    def _generate_isolated(self, batch: list[Prepared]) -> list[Answer | Any]:
        """Answers for the batch; if the batch fails, free memory and retry one by one.

        So an out-of-memory batch still answers every request, and only a culprit gets the error.
        """
        if not batch:
            return []
        try:
            return self._generate(batch)
        except Exception as exc:  # any failure, even an unforeseen one, must still answer each request
            cause = f"{type(exc).__name__}: {exc}"
        # Outside the except block: the traceback (and the tensors its frames hold) is gone by now.
        self._free_memory()
        if len(batch) == 1:
            pb_utils.Logger.log_error(f"generate failed for a single request: {cause}")
            return [_error(f"generation failed: {cause}", pb_utils.TritonError.INTERNAL)]
        pb_utils.Logger.log_warn(
            f"generate failed for a batch of {len(batch)} requests ({cause}); memory freed, "
            "answering each request on its own"
        )
        return [outcome for prepared in batch for outcome in self._generate_isolated([prepared])]

    def _free_memory(self) -> None:
        gc.collect()
        if getattr(self, "device", None) is not None and self.device.type == "cuda":
            torch.cuda.empty_cache()

    @torch.inference_mode()
    def _generate(self, batch: list[Prepared]) -> list[Answer]:
        images = [image for prepared in batch for image in prepared.images]
        inputs = self.processor(
            text=[prepared.prompt for prepared in batch], images=images or None, padding=True, return_tensors="pt"
        ).to(self.device)
        temperatures = [prepared.temperature for prepared in batch]
        settings: dict[str, Any] = {"max_new_tokens": max(prepared.max_tokens for prepared in batch)}
        processors = LogitsProcessorList()
        if any(temperature > 0 for temperature in temperatures):
            settings.update(do_sample=True, temperature=1.0, top_k=0, top_p=1.0)
            processors.append(_PerRowSampling(temperatures, self.top_p))
        else:
            settings["do_sample"] = False
        generation = copy.deepcopy(self.generation)
        generation.update(**settings)
        output = self.model.generate(**inputs, generation_config=generation, logits_processor=processors)
        new_tokens = output[:, inputs["input_ids"].shape[1] :].tolist()
        prompt_lengths = inputs["attention_mask"].sum(dim=1).tolist()
        answers = []
        for prepared, tokens, length in zip(batch, new_tokens, prompt_lengths, strict=True):
            tokens = tokens[: prepared.max_tokens]
            stop = next((i for i, token in enumerate(tokens) if token in self.stop_ids), None)
            kept = tokens if stop is None else tokens[:stop]
            text = self.processor.tokenizer.decode(kept, skip_special_tokens=True).strip()
            answers.append(Answer(text, int(length), len(tokens) if stop is None else stop + 1))
        return answers

    def _respond(self, outcome: Answer | Any) -> Any:
        if not isinstance(outcome, Answer):
            return outcome
        try:
            return self._response(outcome)
        except Exception as exc:  # one answer that cannot be sent must not cost the others theirs
            pb_utils.Logger.log_error(f"building a response failed: {exc!r}")
            return _error(f"the answer could not be sent: {exc}", pb_utils.TritonError.INTERNAL)

    def _response(self, answer: Answer) -> Any:
        values = {
            _TEXT: answer.text.encode("utf-8"),
            _PROMPT_TOKENS: answer.prompt_tokens,
            _COMPLETION_TOKENS: answer.completion_tokens,
            _MODEL_VERSION: self.version.encode("utf-8"),
        }
        return pb_utils.InferenceResponse(
            output_tensors=[
                pb_utils.Tensor(name, np.array([[value]], dtype=self.output_dtypes[name]))
                for name, value in values.items()
            ]
        )


def _error(message: str, code: Any) -> Any:
    return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(message, code))
