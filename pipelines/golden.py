"""`golden` stage: produce (builtin) or import (real model) the golden set, and gate it with GX."""

from __future__ import annotations

import argparse
import json
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

from PIL import Image

from pipelines.errors import StageError, run_stage
from pipelines.evaluate import Accuracy, Question, generate_answers, score
from pipelines.files import atomic_dir
from pipelines.golden_suite import check_golden
from pipelines.gx_suite import describe
from pipelines.params import EvalParams, GoldenParams, ModelParams, load_group
from pipelines.tiny_model import BUILTIN_SOURCE
from pipelines.tiny_model.shapes import CATEGORIES, sample

ROWS_FILE = "golden.jsonl"


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


def read_rows(jsonl: Path) -> list[dict[str, Any]]:
    """Parse a golden JSONL file; a line that is not a JSON object is named with its number."""
    if not jsonl.is_file():
        raise StageError(f"golden set {jsonl}: file not found (set golden.path to a golden.jsonl)")
    rows = []
    for number, line in enumerate(jsonl.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise StageError(f"{jsonl}:{number}: not valid JSON ({exc.msg})") from exc
        if not isinstance(row, dict):
            raise StageError(f"{jsonl}:{number}: each line must be a JSON object")
        rows.append(row)
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


def build_golden(params: GoldenParams, builtin: bool, out: Path) -> dict[str, int]:
    """Produce the golden set in ``out`` (atomically) or raise ``StageError`` naming the bad rows."""
    if not builtin and params.path is None:
        raise StageError("golden.path: a real model needs a user-supplied golden set (golden.jsonl + images)")
    with atomic_dir(out) as tmp:
        rows = (
            generate_rows(params.seed, params.size, tmp)
            if builtin and params.path is None
            else _import_rows(params.path, tmp)  # type: ignore[arg-type]
        )
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


def load_questions(golden_dir: Path) -> list[Question]:
    """The golden set as ``Question``s with decoded images, in file order."""
    out = []
    for row in read_rows(golden_dir / ROWS_FILE):
        with Image.open(golden_dir / row["image"]) as img:
            image = img.convert("RGB")
        out.append(
            Question(
                id=str(row["id"]), image=image, question=row["question"], answer=row["answer"], category=row["category"]
            )
        )
    return out


def golden_accuracy(model: Any, processor: Any, golden_dir: Path, ev: EvalParams) -> Accuracy:
    """In-process accuracy of a loaded model on the golden set in ``golden_dir``."""
    questions = load_questions(golden_dir)
    answers = generate_answers(model, processor, questions, batch_size=ev.batch_size, max_new_tokens=ev.max_new_tokens)
    return score(questions, answers)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.golden", description=__doc__)
    parser.add_argument("--out", type=Path, required=True, help="golden set folder to write")
    args = parser.parse_args(argv)

    def body() -> str:
        params = load_group("golden", GoldenParams)
        builtin = load_group("model", ModelParams).source == BUILTIN_SOURCE
        counts = build_golden(params, builtin, args.out)
        return f"{sum(counts.values())} rows ({', '.join(f'{c} {n}' for c, n in counts.items())}) -> {args.out}"

    return run_stage("golden", body)


if __name__ == "__main__":
    raise SystemExit(main())
