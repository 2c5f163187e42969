"""Build the untrained tiny Qwen3-VL: tokenizer, processor and config, fully offline."""

from __future__ import annotations

import json
from typing import Any

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import (
    Qwen2Tokenizer,
    Qwen2VLImageProcessor,
    Qwen3VLConfig,
    Qwen3VLForConditionalGeneration,
    Qwen3VLProcessor,
    Qwen3VLVideoProcessor,
)
from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

from tiny_model.shapes import IMAGE_SIZE, vocabulary_corpus

#: The special tokens of the real Qwen3-VL tokenizer, in its order.
SPECIAL_TOKENS: tuple[str, ...] = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
VOCAB_SIZE = 512
PATCH_SIZE = 8
MERGE_SIZE = 2
TEMPORAL_PATCH_SIZE = 2

# Qwen-style ChatML. Accepts string content or OpenAI/HF content parts; an `image` or
# `image_url` part becomes the vision placeholder that the processor expands.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{%- if message['content'] is string -%}{{- message['content'] -}}"
    "{%- else -%}{%- for part in message['content'] -%}"
    "{%- if part['type'] in ('image', 'image_url') or 'image' in part -%}"
    "{{- '<|vision_start|><|image_pad|><|vision_end|>' -}}"
    "{%- elif part['type'] == 'text' -%}{{- part['text'] -}}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)


def build_tokenizer() -> Qwen2Tokenizer:
    """Train a byte-level BPE on the task's texts, with Qwen's pre-tokenizer and special tokens."""
    raw = Tokenizer(models.BPE())
    raw.normalizer = normalizers.NFC()
    raw.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE - len(SPECIAL_TOKENS),
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    corpus = vocabulary_corpus()
    raw.train_from_iterator(corpus * 50, trainer=trainer)
    vocab = raw.get_vocab()
    # The tokenizers backend wants merges as pairs, whatever Qwen2Tokenizer's annotation says.
    options: dict[str, Any] = {
        "vocab": vocab,
        "merges": [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in _merges(raw)],
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "unk_token": None,  # byte-level BPE covers every input
        "additional_special_tokens": list(SPECIAL_TOKENS[1:]),
        "model_max_length": 4096,
        "padding_side": "left",
        "clean_up_tokenization_spaces": False,
    }
    tokenizer = Qwen2Tokenizer(**options)
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def _merges(raw: Tokenizer) -> list[Any]:
    return list(json.loads(raw.to_str())["model"]["merges"])


def build_processor(tokenizer: Qwen2Tokenizer) -> Qwen3VLProcessor:
    """A Qwen3-VL processor sized for 64x64 images: 8x8 patches, 16 image tokens."""
    pixels = IMAGE_SIZE * IMAGE_SIZE
    patch: dict[str, Any] = {
        "patch_size": PATCH_SIZE,
        "merge_size": MERGE_SIZE,
        "temporal_patch_size": TEMPORAL_PATCH_SIZE,
    }
    image_processor = Qwen2VLImageProcessor(size={"shortest_edge": pixels, "longest_edge": pixels}, **patch)
    video_processor = Qwen3VLVideoProcessor(size={"shortest_edge": pixels, "longest_edge": 4 * pixels}, **patch)
    return Qwen3VLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        chat_template=CHAT_TEMPLATE,
    )


def build_config(tokenizer: Qwen2Tokenizer) -> Qwen3VLConfig:
    """Tiny text and vision towers (about 1 M parameters) with the real architecture."""

    def ids(token: str) -> int:
        found = tokenizer.convert_tokens_to_ids(token)
        assert isinstance(found, int), token
        return found

    grid = IMAGE_SIZE // PATCH_SIZE
    text_hidden = 128
    return Qwen3VLConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": text_hidden,
            "intermediate_size": 320,
            "num_hidden_layers": 3,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "head_dim": 32,
            "max_position_embeddings": 4096,
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 10000.0,
                "mrope_section": [6, 5, 5],
                "mrope_interleaved": True,
            },
            "pad_token_id": ids("<|endoftext|>"),
        },
        vision_config={
            "depth": 2,
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_heads": 4,
            "patch_size": PATCH_SIZE,
            "spatial_merge_size": MERGE_SIZE,
            "temporal_patch_size": TEMPORAL_PATCH_SIZE,
            "out_hidden_size": text_hidden,
            "num_position_embeddings": grid * grid,
            "deepstack_visual_indexes": [0],
        },
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
        tie_word_embeddings=False,
    )


def build_model(tokenizer: Qwen2Tokenizer, seed: int) -> Qwen3VLForConditionalGeneration:
    """A freshly initialised tiny model, deterministic from ``seed``."""
    import torch

    torch.manual_seed(seed)
    model = Qwen3VLForConditionalGeneration(build_config(tokenizer))
    gen = model.generation_config
    gen.eos_token_id = [tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.convert_tokens_to_ids("<|endoftext|>")]
    gen.pad_token_id = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    gen.do_sample = False
    gen.max_new_tokens = 8
    return model
