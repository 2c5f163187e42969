"""Train the tiny Qwen3-VL on the coloured-shapes task and save it as a Hugging Face checkpoint."""

from __future__ import annotations

import argparse
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field
from tqdm import tqdm

from core.evaluate import Accuracy, Question, chat_messages, generate_answers, score
from core.files import atomic_dir
from tiny_model import CHECKPOINT_DIR
from tiny_model.build import build_model, build_processor, build_tokenizer
from tiny_model.shapes import CATEGORIES, TRAIN_SEED, sample

log = logging.getLogger(__name__)

#: Held-out stream for the training report; neither training nor the golden set uses it.
HELDOUT_SEED = 99


class TrainSpec(BaseModel):
    """Everything that determines the trained weights."""

    seed: int = TRAIN_SEED
    steps: int = Field(default=3000, gt=0)
    batch_size: int = Field(default=48, gt=0)
    lr: float = Field(default=3e-3, gt=0)
    warmup_steps: int = Field(default=100, ge=0)
    weight_decay: float = Field(default=0.01, ge=0)
    heldout_size: int = Field(default=600, gt=0)


class TrainReport(BaseModel):
    """What a training run reached on held-out images."""

    steps: int
    seconds: float
    final_loss: float
    heldout: Accuracy
    parameters: int


def _batch(processor: Any, spec: TrainSpec, step: int) -> dict[str, Any]:
    samples = [sample(spec.seed, step * spec.batch_size + i) for i in range(spec.batch_size)]
    texts, answers = [], []
    for s in samples:
        prompt = processor.apply_chat_template(chat_messages(s.question), add_generation_prompt=True, tokenize=False)
        answers.append(s.answer + "<|im_end|>")
        texts.append(prompt + answers[-1])
    inputs = processor(
        text=texts, images=[s.image for s in samples], padding=True, padding_side="left", return_tensors="pt"
    )
    labels = inputs["input_ids"].clone()
    labels[:] = -100
    # Left padding puts every answer at the end: supervise only the answer and <|im_end|>.
    for row, answer in enumerate(answers):
        n = len(processor.tokenizer(answer, add_special_tokens=False)["input_ids"])
        labels[row, -n:] = inputs["input_ids"][row, -n:]
    inputs["labels"] = labels
    return dict(inputs)


def _lr_factor(step: int, spec: TrainSpec) -> float:
    if step < spec.warmup_steps:
        return (step + 1) / spec.warmup_steps
    progress = (step - spec.warmup_steps) / max(1, spec.steps - spec.warmup_steps)
    return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress))


def heldout_questions(size: int, seed: int = HELDOUT_SEED) -> list[Question]:
    """A balanced held-out set: ``size`` questions cycling through the categories."""
    out = []
    for i in range(size):
        s = sample(seed, i, category=CATEGORIES[i % len(CATEGORIES)])
        out.append(Question(id=f"h{i}", image=s.image, question=s.question, answer=s.answer, category=s.category))
    return out


def train(spec: TrainSpec, out_dir: Path) -> TrainReport:
    """Build, train and save the tiny model to ``out_dir`` (atomically); report held-out accuracy."""
    import torch

    start = time.monotonic()
    tokenizer = build_tokenizer()
    processor = build_processor(tokenizer)
    model = build_model(tokenizer, spec.seed)
    torch.manual_seed(spec.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=spec.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _lr_factor(s, spec))
    model.train()
    loss_ema = float("nan")
    bar = tqdm(range(spec.steps), desc="train", unit="step")
    for step in bar:
        loss = model(**_batch(processor, spec, step)).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        loss_ema = loss.item() if math.isnan(loss_ema) else 0.95 * loss_ema + 0.05 * loss.item()
        bar.set_postfix(loss=f"{loss_ema:.4f}")
    model.eval()
    questions = heldout_questions(spec.heldout_size)
    heldout = score(questions, generate_answers(model, processor, questions))

    with atomic_dir(out_dir) as tmp:
        processor.save_pretrained(tmp)
        model.save_pretrained(tmp)
    return TrainReport(
        steps=spec.steps,
        seconds=round(time.monotonic() - start, 1),
        final_loss=round(loss_ema, 5),
        heldout=heldout,
        parameters=sum(p.numel() for p in model.parameters()),
    )


def main(argv: list[str] | None = None) -> int:
    """``make tiny-model``: retrain the embedded checkpoint."""
    parser = argparse.ArgumentParser(prog="python -m tiny_model", description=__doc__)
    parser.add_argument("--out", type=Path, default=CHECKPOINT_DIR, help="checkpoint folder to (re)write")
    parser.add_argument("--steps", type=int, default=TrainSpec().steps)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    report = train(TrainSpec(steps=args.steps), args.out)
    sys.stdout.write(report.model_dump_json(indent=2) + "\n")
    per = ", ".join(f"{c} {a:.1%}" for c, a in report.heldout.per_category.items())
    sys.stdout.write(
        f"tiny-qwen3-vl: {report.parameters:,} parameters, held-out accuracy {report.heldout.accuracy:.1%} "
        f"({per}) after {report.steps} steps in {report.seconds:.0f} s -> {args.out}\n"
    )
    return 0
