"""The tiny model's tokenizer, processor and checkpoint behave like a real Qwen3-VL's."""

from __future__ import annotations

from pathlib import Path

from tiny_model.build import CHAT_TEMPLATE, SPECIAL_TOKENS, build_processor, build_tokenizer
from tiny_model.shapes import sample


def test_tokenizer_holds_qwen_special_tokens_as_single_ids() -> None:
    tok = build_tokenizer()
    for token in SPECIAL_TOKENS:
        ids = tok(token, add_special_tokens=False)["input_ids"]
        assert len(ids) == 1, token
        assert tok.decode(ids) == token
    assert tok.eos_token == "<|im_end|>"
    assert tok.pad_token == "<|endoftext|>"
    assert tok.padding_side == "left"


def test_tokenizer_is_byte_level_and_round_trips_unseen_text() -> None:
    tok = build_tokenizer()
    text = "Zebra café 42 ✓ — how many?"
    assert tok.decode(tok(text)["input_ids"]) == text


def test_tokenizer_build_is_deterministic() -> None:
    assert build_tokenizer().get_vocab() == build_tokenizer().get_vocab()


def test_processor_expands_one_image_to_sixteen_tokens() -> None:
    processor = build_processor(build_tokenizer())
    s = sample(seed=5, index=0)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": s.question}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text.startswith("<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>")
    assert text.endswith("<|im_end|>\n<|im_start|>assistant\n")
    inputs = processor(text=[text], images=[s.image], return_tensors="pt")
    image_id = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert int((inputs["input_ids"] == image_id).sum()) == 16  # 64x64 / 8x8 patches / 2x2 merge
    assert inputs["image_grid_thw"].tolist() == [[1, 8, 8]]


def test_chat_template_takes_openai_image_url_parts() -> None:
    processor = build_processor(build_tokenizer())
    messages = [
        {"role": "system", "content": "Answer in one word."},
        {
            "role": "user",
            "content": [{"type": "image_url", "image_url": {"url": "data:,"}}, {"type": "text", "text": "Hi"}],
        },
    ]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert "<|im_start|>system\nAnswer in one word.<|im_end|>" in text
    assert "<|vision_start|><|image_pad|><|vision_end|>Hi" in text
    assert processor.chat_template == CHAT_TEMPLATE


def test_committed_checkpoint_loads_with_auto_classes_and_answers(tiny_checkpoint: Path) -> None:
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_checkpoint)
    model = AutoModelForImageTextToText.from_pretrained(tiny_checkpoint).eval()
    assert type(model).__name__ == "Qwen3VLForConditionalGeneration"
    n_params = sum(p.numel() for p in model.parameters())
    assert 500_000 < n_params < 2_000_000
    weights = sum(p.stat().st_size for p in tiny_checkpoint.glob("*.safetensors"))
    assert weights < 10 * 1024 * 1024
    s = sample(seed=4242, index=3, category="color")
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": s.question}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    inputs = processor(text=[text], images=[s.image], return_tensors="pt")
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=6, do_sample=False)
    answer = processor.batch_decode(out[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)[0]
    assert answer.strip() == s.answer
