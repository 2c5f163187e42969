"""In-process golden-answer evaluation: batched greedy generation and normalized exact match."""

from __future__ import annotations

import warnings
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from PIL import Image
from pydantic import BaseModel
from tqdm import tqdm

from core.answers import normalize_answer


@dataclass(frozen=True)
class Question:
    """One golden question: an image, the question about it and the expected answer."""

    id: str
    image: Image.Image
    question: str
    answer: str
    category: str


class Accuracy(BaseModel):
    """Normalized exact-match accuracy, overall and per category."""

    accuracy: float
    per_category: dict[str, float]
    n: int


def score(questions: Sequence[Question], predictions: Sequence[str]) -> Accuracy:
    """Normalized exact match of ``predictions`` against the questions' answers."""
    if len(questions) != len(predictions):
        raise ValueError(f"{len(questions)} questions but {len(predictions)} predictions")
    if not questions:
        raise ValueError("cannot score an empty golden set")
    hits: dict[str, list[bool]] = defaultdict(list)
    for q, p in zip(questions, predictions, strict=True):
        hits[q.category].append(normalize_answer(p) == normalize_answer(q.answer))
    every = [h for hs in hits.values() for h in hs]
    return Accuracy(
        accuracy=round(sum(every) / len(every), 4),
        per_category={c: round(sum(hs) / len(hs), 4) for c, hs in sorted(hits.items())},
        n=len(every),
    )


class Answer(BaseModel):
    """One golden question's answer and its verdict: a row of a per-question answers file."""

    id: str
    answer: str
    correct: bool


def judge(questions: Sequence[Question], predictions: Sequence[str]) -> list[Answer]:
    """Each prediction judged by normalized exact match, in question order (the rows ``score`` counts)."""
    if len(questions) != len(predictions):
        raise ValueError(f"{len(questions)} questions but {len(predictions)} predictions")
    return [
        Answer(id=q.id, answer=p, correct=normalize_answer(p) == normalize_answer(q.answer))
        for q, p in zip(questions, predictions, strict=True)
    ]


def chat_messages(question: str) -> list[dict[str, Any]]:
    """The single-turn conversation used for golden questions (image first, then the text)."""
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]


def _batches(items: Sequence[Question], size: int) -> Iterable[Sequence[Question]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def generate_answers(
    model: Any,
    processor: Any,
    questions: Sequence[Question],
    *,
    batch_size: int = 32,
    max_new_tokens: int = 8,
    progress: bool = True,
) -> list[str]:
    """Greedy answers for ``questions``, in order, one batched ``generate`` per batch (left padding)."""
    import torch

    answers: list[str] = []
    bar = tqdm(total=len(questions), desc="golden", unit="q", disable=not progress, leave=False)
    device = next(model.parameters()).device
    for batch in _batches(questions, batch_size):
        texts = [
            processor.apply_chat_template(chat_messages(q.question), add_generation_prompt=True, tokenize=False)
            for q in batch
        ]
        inputs = processor(
            text=texts, images=[q.image for q in batch], padding=True, padding_side="left", return_tensors="pt"
        ).to(device)
        with torch.inference_mode(), warnings.catch_warnings():
            # bitsandbytes int8 on CPU says this once per matmul; it is expected there.
            warnings.filterwarnings("ignore", message="MatMul8bitLt: inputs will be cast")
            out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        new_tokens = out[:, inputs["input_ids"].shape[1] :]
        answers.extend(processor.batch_decode(new_tokens, skip_special_tokens=True))
        bar.update(len(batch))
    bar.close()
    return [a.strip() for a in answers]
