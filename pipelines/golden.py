"""`golden` stage: produce (builtin) or import (real model) the golden set, and gate it with GX."""

from __future__ import annotations

import argparse
import json
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator

from core.answers import ROWS_FILE, read_rows
from core.files import atomic_dir
from core.golden import check_golden
from core.gx import describe
from core.params import ModelParams, ParamsGroup, load_group
from core.stage import StageError, run_stage
from tiny_model import is_builtin_checkpoint, is_builtin_generator
from tiny_model.shapes import CATEGORIES, TRAIN_SEED, sample


class GoldenParams(ParamsGroup):
    seed: int
    size: int = Field(gt=0)
    path: Path
    categories: list[str] = Field(min_length=1)
    min_rows: int = Field(ge=1)
    min_per_category: int = Field(ge=0)

    @field_validator("seed")
    @classmethod
    def _not_the_training_seed(cls, seed: int) -> int:
        if seed == TRAIN_SEED:
            raise ValueError(f"must differ from the tiny model's training seed ({TRAIN_SEED})")
        return seed


def generate_rows(seed: int, size: int, out: Path) -> list[dict[str, Any]]:
    """Write ``size`` images under ``out/images`` and return their rows, categories balanced."""
    (out / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(size):
        s = sample(seed, i, category=CATEGORIES[i % len(CATEGORIES)])
        rel = f"images/{i:05d}.png"
        s.image.save(out / rel, format="PNG", optimize=False)
        rows.append(
            {"id": f"g{i:05d}", "image": rel, "question": s.question, "answer": s.answer, "category": s.category}
        )
    return rows


def _import_rows(source: Path, out: Path) -> list[dict[str, Any]]:
    rows = read_rows(source)
    base = source.parent.resolve()
    (out / "images").mkdir(parents=True, exist_ok=True)
    for number, row in enumerate(rows):
        image = row.get("image")
        if not isinstance(image, str):
            continue
        found = (base / image).resolve()
        row["image"] = None  # unless copied below: a missing file must not alias another row's copy
        # Copy only files inside the set's folder, under names we choose (ids may hold any text);
        # anything else stays as given and the suite reports it as an image that does not decode.
        if found.is_file() and found.is_relative_to(base):
            dest = Path("images") / f"{number:05d}{found.suffix.lower()}"
            shutil.copy2(found, out / dest)
            row["image"] = dest.as_posix()
    return rows


def rows_file(path: Path) -> Path:
    """The golden.jsonl that ``golden.path`` names: the file itself, or the one in that folder."""
    return path / ROWS_FILE if path.is_dir() else path


def build_golden(params: GoldenParams, builtin_model: bool, out: Path) -> dict[str, int]:
    """Produce the golden set in ``out`` (atomically) or raise ``StageError`` naming the bad rows."""
    generate = is_builtin_generator(params.path)
    if generate and not builtin_model:
        raise StageError(
            f"golden.path: {params.path} generates the tiny model's shapes task, which says nothing about "
            "a real model; point golden.path at your golden set (a folder with golden.jsonl and its images)"
        )
    with atomic_dir(out) as tmp:
        rows = generate_rows(params.seed, params.size, tmp) if generate else _import_rows(rows_file(params.path), tmp)
        findings = check_golden(rows, tmp, params.categories, params.min_rows)
        counts = Counter(str(r.get("category")) for r in rows)
        thin = {c: counts.get(c, 0) for c in params.categories if counts.get(c, 0) < params.min_per_category}
        if findings or thin:
            extra = [f"categories below {params.min_per_category} rows: {thin}"] if thin else []
            raise StageError(
                "golden set failed its expectations:\n  " + "\n  ".join([describe(findings), *extra]).strip()
            )
        with (tmp / ROWS_FILE).open("w") as fh:
            for row in rows:
                fh.write(json.dumps(row, sort_keys=True) + "\n")
    return dict(sorted(counts.items()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.golden", description=__doc__)
    parser.add_argument("--out", type=Path, required=True, help="golden set folder to write")
    args = parser.parse_args(argv)

    def body() -> str:
        params = load_group("golden", GoldenParams)
        builtin = is_builtin_checkpoint(Path(load_group("model", ModelParams).source))
        counts = build_golden(params, builtin, args.out)
        return f"{sum(counts.values())} rows ({', '.join(f'{c} {n}' for c, n in counts.items())}) -> {args.out}"

    return run_stage("golden", body)


if __name__ == "__main__":
    raise SystemExit(main())
