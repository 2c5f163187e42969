"""The golden set: deterministic, disjoint from training, and guarded by its GX suite."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from core.answers import ROWS_FILE, read_rows
from core.golden import check_golden
from core.stage import StageError
from pipelines.golden import GoldenParams, build_golden, generate_rows
from tiny_model import GENERATOR_FILE
from tiny_model.shapes import CATEGORIES, TRAIN_SEED, sample

CATS = list(CATEGORIES)


def _params(**overrides: object) -> GoldenParams:
    base: dict[str, object] = {
        "seed": 1729,
        "size": 30,
        "categories": CATS,
        "min_rows": 30,
        "min_per_category": 10,
        "path": GENERATOR_FILE,
    }
    return GoldenParams.model_validate(base | overrides)


def test_generator_is_deterministic(tmp_path: Path) -> None:
    a = generate_rows(1729, 12, tmp_path / "a")
    b = generate_rows(1729, 12, tmp_path / "b")
    assert a == b
    for row in a:
        assert (tmp_path / "a" / row["image"]).read_bytes() == (tmp_path / "b" / row["image"]).read_bytes()


def test_other_seed_gives_other_images(tmp_path: Path) -> None:
    generate_rows(1729, 4, tmp_path / "a")
    generate_rows(1730, 4, tmp_path / "b")
    same = [
        (tmp_path / "a" / f"images/{i:05d}.png").read_bytes() == (tmp_path / "b" / f"images/{i:05d}.png").read_bytes()
        for i in range(4)
    ]
    assert not any(same)


def test_golden_images_never_appear_in_the_training_stream() -> None:
    training = {sample(TRAIN_SEED, i).image.tobytes() for i in range(2000)}
    golden = [sample(1729, i).image.tobytes() for i in range(300)]
    assert not training.intersection(golden)


def test_golden_seed_may_not_be_the_training_seed() -> None:
    with pytest.raises(ValueError, match="training seed"):
        _params(seed=TRAIN_SEED)


def test_build_golden_balances_categories(tmp_path: Path) -> None:
    counts = build_golden(_params(), builtin_model=True, out=tmp_path / "g")
    assert counts == {"color": 10, "count": 10, "shape": 10}
    rows = read_rows(tmp_path / "g" / ROWS_FILE)
    assert {r["category"] for r in rows} == set(CATS)
    assert set(rows[0]) == {"id", "image", "question", "answer", "category"}


def _bad_set(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    rows = generate_rows(1729, 8, src)
    rows[1]["id"] = rows[0]["id"]  # duplicate id
    rows[2]["answer"] = "  "  # empty answer
    rows[3]["question"] = ""  # empty question
    rows[4]["category"] = "texture"  # undeclared category
    (src / rows[5]["image"]).unlink()  # missing image
    (src / rows[6]["image"]).write_bytes(b"not a png")  # undecodable image
    (src / ROWS_FILE).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return src


def test_suite_names_each_offending_row(tmp_path: Path) -> None:
    src = _bad_set(tmp_path)
    rows = read_rows(src / ROWS_FILE)
    findings = {(f.expectation, f.column): f.rows for f in check_golden(rows, src, CATS, min_rows=8)}
    assert findings[("expect_column_values_to_be_unique", "id")] == ["g00000", "g00000"]
    assert findings[("expect_column_value_lengths_to_be_between", "answer_text")] == ["g00002"] or findings[
        ("expect_column_values_to_not_be_null", "answer_text")
    ] == ["g00002"]
    assert "g00004" in findings[("expect_column_values_to_be_in_set", "category")]
    assert findings[("expect_column_values_to_be_in_set", "image_decodes")] == ["g00005", "g00006"]


def test_suite_passes_a_good_set_and_counts_rows(tmp_path: Path) -> None:
    rows = generate_rows(1729, 6, tmp_path)
    assert check_golden(rows, tmp_path, CATS, min_rows=6) == []
    too_few = check_golden(rows, tmp_path, CATS, min_rows=7)
    assert [f.expectation for f in too_few] == ["expect_table_row_count_to_be_between"]
    assert "observed 6" in too_few[0].detail and "7" in too_few[0].detail


def test_stage_fails_on_a_bad_user_set_and_keeps_the_old_output(tmp_path: Path) -> None:
    src = _bad_set(tmp_path)
    out = tmp_path / "out"
    build_golden(_params(size=9, min_rows=9, min_per_category=3), builtin_model=True, out=out)
    before = (out / ROWS_FILE).read_text()
    with pytest.raises(StageError) as err:
        build_golden(_params(path=src / ROWS_FILE, min_rows=8, min_per_category=0), builtin_model=False, out=out)
    message = str(err.value)
    assert "g00005" in message and "g00006" in message and "image_decodes" in message
    assert (out / ROWS_FILE).read_text() == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.tmp")]


def test_real_model_needs_a_golden_path(tmp_path: Path) -> None:
    with pytest.raises(StageError, match=r"golden\.path: .*point golden\.path at your golden set"):
        build_golden(_params(), builtin_model=False, out=tmp_path / "g")


def test_user_set_may_be_named_by_its_folder(tmp_path: Path) -> None:
    src = tmp_path / "src"
    rows = generate_rows(1729, 9, src)
    (src / ROWS_FILE).write_text("".join(json.dumps(r) + "\n" for r in rows))

    counts = build_golden(_params(path=src, min_rows=9, min_per_category=3), builtin_model=False, out=tmp_path / "out")

    assert sum(counts.values()) == 9


def test_user_set_is_imported_with_its_images(tmp_path: Path) -> None:
    src = tmp_path / "src"
    rows = generate_rows(1729, 9, src)
    (src / ROWS_FILE).write_text("".join(json.dumps(r) + "\n" for r in rows))
    shutil.rmtree(tmp_path / "out", ignore_errors=True)
    counts = build_golden(
        _params(path=src / ROWS_FILE, min_rows=9, min_per_category=3), builtin_model=False, out=tmp_path / "out"
    )
    assert sum(counts.values()) == 9
    assert all((tmp_path / "out" / r["image"]).is_file() for r in read_rows(tmp_path / "out" / ROWS_FILE))


def test_malformed_jsonl_line_is_named(tmp_path: Path) -> None:
    bad = tmp_path / ROWS_FILE
    bad.write_text('{"id": "a"}\n{oops\n')
    with pytest.raises(StageError, match=r"golden.jsonl:2: not valid JSON"):
        read_rows(bad)


def test_user_set_cannot_reach_outside_its_folder(tmp_path: Path) -> None:
    src = tmp_path / "set"
    rows = generate_rows(1729, 3, src)
    (tmp_path / "secret.png").write_bytes((src / rows[0]["image"]).read_bytes())
    rows[0]["image"] = "../secret.png"
    (src / ROWS_FILE).write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(StageError) as err:
        build_golden(
            _params(path=src / ROWS_FILE, min_rows=3, min_per_category=0), builtin_model=False, out=tmp_path / "out"
        )
    assert "image_decodes" in str(err.value) and "g00000" in str(err.value)


def test_missing_image_does_not_borrow_another_rows_copy(tmp_path: Path) -> None:
    src = tmp_path / "set"
    rows = generate_rows(1729, 3, src)
    # Users' sets often number images from 1: row 0's missing file has row 1's output name.
    for number, row in reversed(list(enumerate(rows))):
        (src / row["image"]).rename(src / f"images/{number + 1:05d}.png")
        row["image"] = f"images/{number + 1:05d}.png"
    (src / "images/00001.png").unlink()
    (src / ROWS_FILE).write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(StageError) as err:
        build_golden(
            _params(path=src / ROWS_FILE, min_rows=3, min_per_category=0), builtin_model=False, out=tmp_path / "out"
        )
    assert "image_decodes" in str(err.value) and "rows g00000" in str(err.value)
