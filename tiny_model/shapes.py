"""Synthetic visual question answering: coloured shapes, asked about colour, shape and count.

Every sample is a pure function of ``(seed, index)``, so the training stream and the golden set are
reproducible and provably disjoint (they use different seeds).
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

from PIL import Image, ImageDraw

IMAGE_SIZE = 64

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (215, 40, 40),
    "green": (40, 160, 60),
    "blue": (40, 80, 215),
    "yellow": (225, 195, 25),
    "purple": (135, 55, 175),
    "orange": (240, 130, 20),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
COUNT_WORDS: tuple[str, ...] = ("one", "two", "three", "four")
CATEGORIES: tuple[str, ...] = ("color", "shape", "count")

QUESTIONS: dict[str, tuple[str, ...]] = {
    "color": (
        "What color are the shapes?",
        "What colour is the shape?",
        "Which color do you see?",
        "What is the color of the objects?",
    ),
    "shape": (
        "What shape is shown?",
        "Which shape is in the picture?",
        "What kind of shape is this?",
        "Name the shape in the image.",
    ),
    "count": (
        "How many shapes are there?",
        "How many objects can you count?",
        "Count the shapes.",
        "How many shapes are in the image?",
    ),
}

#: Seed of the training stream. The golden set must use another one.
TRAIN_SEED = 0


@dataclass(frozen=True)
class Sample:
    """One image with one question about it."""

    image: Image.Image
    question: str
    answer: str
    category: str


def _rng(seed: int, index: int) -> random.Random:
    digest = hashlib.sha256(f"shapes:{seed}:{index}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, box: tuple[int, int, int, int], rgb: tuple[int, ...]) -> None:
    x0, y0, x1, y1 = box
    if shape == "circle":
        draw.ellipse(box, fill=rgb)
    elif shape == "square":
        draw.rectangle(box, fill=rgb)
    elif shape == "triangle":
        draw.polygon([((x0 + x1) // 2, y0), (x1, y1), (x0, y1)], fill=rgb)
    else:
        raise ValueError(f"unknown shape {shape!r}; known: {', '.join(SHAPES)}")


def render(color: str, shape: str, count: int, rng: random.Random) -> Image.Image:
    """Draw ``count`` shapes of one colour, one per quadrant, on a light background."""
    background = tuple(rng.randint(225, 255) for _ in range(3))
    image = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), background)
    draw = ImageDraw.Draw(image)
    cell = IMAGE_SIZE // 2
    jitter = [rng.randint(-12, 12) for _ in range(3)]
    rgb = tuple(max(0, min(255, c + j)) for c, j in zip(COLORS[color], jitter, strict=True))
    for quadrant in rng.sample(range(4), count):
        side = rng.randint(12, 24)
        x = (quadrant % 2) * cell + rng.randint(2, cell - side - 2)
        y = (quadrant // 2) * cell + rng.randint(2, cell - side - 2)
        _draw_shape(draw, shape, (x, y, x + side, y + side), rgb)
    return image


def sample(seed: int, index: int, category: str | None = None) -> Sample:
    """The ``index``-th sample of the stream named by ``seed``; ``category`` forces the question type."""
    rng = _rng(seed, index)
    color = rng.choice(sorted(COLORS))
    shape = rng.choice(SHAPES)
    count = rng.randint(1, len(COUNT_WORDS))
    image = render(color, shape, count, rng)
    cat = category if category is not None else rng.choice(CATEGORIES)
    if cat not in QUESTIONS:
        raise ValueError(f"unknown category {cat!r}; known: {', '.join(CATEGORIES)}")
    question = rng.choice(QUESTIONS[cat])
    answer = {"color": color, "shape": shape, "count": COUNT_WORDS[count - 1]}[cat]
    return Sample(image=image, question=question, answer=answer, category=cat)


def vocabulary_corpus() -> list[str]:
    """Every text the task can produce, for training the tokenizer."""
    words = [*COLORS, *SHAPES, *COUNT_WORDS, "user", "assistant", "system", "You are a helpful assistant."]
    return [q for qs in QUESTIONS.values() for q in qs] + words
