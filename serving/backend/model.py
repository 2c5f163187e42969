"""Triton Python backend for a Qwen3-VL chat model: one batched ``generate`` per ``execute``.

The package stage copies this file into every version folder, next to the weights it loads. The
model's ``config.pbtxt`` is the contract: tensor types and shapes and every generation default come
from ``args["model_config"]``; this file only knows what each tensor means.
"""

from __future__ import annotations

import base64
import binascii
import copy
import io
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import triton_python_backend_utils as pb_utils
from PIL import Image, UnidentifiedImageError
from transformers import (
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
_PARAMETERS = ("MAX_NEW_TOKENS", "TEMPERATURE", "TOP_P", "MAX_HISTORY")
_ROLES = ("system", "user", "assistant")


class BadRequestError(ValueError):
    """A request the client has to fix; answered with INVALID_ARG (HTTP 400)."""


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


def decode_image(url: str, where: str) -> Image.Image:
    """A ``data:image/...;base64,`` URI as an RGB image; remote URLs are refused, not fetched."""
    header, sep, payload = url.partition(",")
    if not (url.startswith("data:image/") and sep and header.endswith(";base64")):
        raise BadRequestError(f"{where}: images must be base64 data URIs (data:image/png;base64,...), got {url[:40]!r}")
    try:
        image = Image.open(io.BytesIO(base64.b64decode(payload, validate=True)))
        image.load()
    except (binascii.Error, UnidentifiedImageError, OSError, ValueError) as exc:
        raise BadRequestError(f"{where}: the data URI is not a readable image: {exc}") from exc
    return image.convert("RGB")


def to_template(messages: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[Image.Image]]:
    """Messages for the chat template (images become placeholders) and the images in prompt order."""
    rendered: list[dict[str, Any]] = []
    images: list[Image.Image] = []
    for index, message in enumerate(messages):
        content = message["content"]
        if isinstance(content, list):
            parts: list[dict[str, Any]] = []
            for number, part in enumerate(content):
                if part["type"] == "image_url":
                    images.append(decode_image(part["image_url"]["url"], f"message {index} part {number}"))
                    parts.append({"type": "image"})
                else:
                    parts.append({"type": "text", "text": part["text"]})
            content = parts
        rendered.append({"role": message["role"], "content": content})
    return rendered, images


class _PerRowSampling(LogitsProcessor):
    """Temperature and top-p per row, so one ``generate`` serves greedy and sampled requests alike."""

    def __init__(self, temperatures: list[float], top_p: float) -> None:
        self.temperatures = torch.tensor(temperatures, dtype=torch.float32)
        self.top_p = top_p

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        temperatures = self.temperatures.to(scores.device)
        greedy = (temperatures <= 0).unsqueeze(1)
        scaled = scores / torch.where(greedy, torch.ones_like(temperatures.unsqueeze(1)), temperatures.unsqueeze(1))
        ordered, order = torch.sort(scaled, descending=True, dim=-1)
        probabilities = ordered.softmax(dim=-1)
        # Drop a token once the mass before it already reaches top_p (the first one always stays).
        drop = (probabilities.cumsum(dim=-1) - probabilities) >= self.top_p
        ordered = ordered.masked_fill(drop, -math.inf)
        sampled = torch.full_like(scaled, -math.inf).scatter(1, order, ordered)
        argmax_only = torch.full_like(scores, -math.inf).scatter(1, scores.argmax(dim=-1, keepdim=True), 0.0)
        return torch.where(greedy, argmax_only, sampled)  # type: ignore[return-value]


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
        parameters = self._parameters(config)
        self.max_new_tokens = int(parameters["MAX_NEW_TOKENS"])
        self.temperature = float(parameters["TEMPERATURE"])
        self.top_p = float(parameters["TOP_P"])
        self.max_history = int(parameters["MAX_HISTORY"])

        folder = Path(args["model_repository"]) / self.version
        gpu = args["model_instance_kind"] == "GPU"
        device = f"cuda:{args['model_instance_device_id']}" if gpu else "cpu"
        # bitsandbytes logs a dtype note on every 8-bit matmul on CPU; it would drown the server log.
        logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
        try:
            self.processor = AutoProcessor.from_pretrained(folder)
            self.model = AutoModelForImageTextToText.from_pretrained(folder, device_map=device, dtype="auto")
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
            f"version {self.version} loaded from {folder} on {device} "
            f"(quantization: {getattr(self.model.config, 'quantization_config', None) is not None})"
        )

    def execute(self, requests: list[Any]) -> list[Any]:
        """One response per request; a bad request gets its own error and the rest still run."""
        responses: list[Any] = [None] * len(requests)
        ready: list[tuple[int, Prepared]] = []
        for index, request in enumerate(requests):
            try:
                ready.append((index, self._prepare(request)))
            except BadRequestError as exc:
                responses[index] = _error(str(exc), pb_utils.TritonError.INVALID_ARG)
            except Exception as exc:  # a bug met by one request must not fail its batch neighbours
                pb_utils.Logger.log_error(f"preparing a request failed: {exc!r}")
                responses[index] = _error(f"the request could not be prepared: {exc}", pb_utils.TritonError.INTERNAL)
        for (index, _), outcome in zip(ready, self._generate_isolated([p for _, p in ready]), strict=True):
            responses[index] = self._response(outcome) if isinstance(outcome, Answer) else outcome
        return responses

    def finalize(self) -> None:
        # Drop the weights before the stub exits so a GPU instance frees its memory promptly.
        del self.model

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
        values = {key: entry["string_value"] for key, entry in config.get("parameters", {}).items()}
        missing = [key for key in _PARAMETERS if key not in values]
        if missing:
            raise RuntimeError(f"config.pbtxt lacks parameters {missing}; regenerate it with the package stage")
        return values

    def _prepare(self, request: Any) -> Prepared:
        missing = [name for name in self.required_inputs if pb_utils.get_input_tensor_by_name(request, name) is None]
        if missing:
            raise BadRequestError(f"required input {', '.join(repr(name) for name in missing)} is missing")
        raw = pb_utils.get_input_tensor_by_name(request, _MESSAGES).as_numpy().reshape(-1)
        if raw.size != 1:
            raise BadRequestError(f"send one conversation per request (got {raw.size}); Triton batches requests itself")
        messages = truncate_history(parse_messages(bytes(raw[0])), self.max_history)
        rendered, images = to_template(messages)
        try:
            prompt = self.processor.apply_chat_template(rendered, add_generation_prompt=True, tokenize=False)
        except Exception as exc:  # the template is checkpoint data: any failure is about this request
            raise BadRequestError(f"the chat template rejects these messages: {exc}") from exc
        max_tokens = self._scalar(request, _MAX_TOKENS, self.max_new_tokens)
        if not (1 <= max_tokens <= self.max_new_tokens) or max_tokens != int(max_tokens):
            raise BadRequestError(
                f"'{_MAX_TOKENS}' must be a whole number from 1 to {self.max_new_tokens}, got {max_tokens}"
            )
        temperature = self._scalar(request, _TEMPERATURE, self.temperature)
        if temperature < 0:
            raise BadRequestError(f"'{_TEMPERATURE}' must be 0 (greedy) or more, got {temperature}")
        return Prepared(prompt, images, int(max_tokens), temperature)

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
        """Answers for the batch; if the batch fails, retry one by one so only the culprit gets the error."""
        if not batch:
            return []
        try:
            return list(self._generate(batch))
        except Exception as exc:  # any failure, even an unforeseen one, must still answer each request
            if len(batch) == 1:
                pb_utils.Logger.log_error(f"generate failed: {exc!r}")
                return [_error(f"generation failed: {exc}", pb_utils.TritonError.INTERNAL)]
        return [outcome for prepared in batch for outcome in self._generate_isolated([prepared])]

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
        for prepared, tokens, prompt_length in zip(batch, new_tokens, prompt_lengths, strict=True):
            tokens = tokens[: prepared.max_tokens]
            stop = next((i for i, token in enumerate(tokens) if token in self.stop_ids), None)
            kept = tokens if stop is None else tokens[:stop]
            text = self.processor.tokenizer.decode(kept, skip_special_tokens=True).strip()
            answers.append(Answer(text, int(prompt_length), len(tokens) if stop is None else stop + 1))
        return answers

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
