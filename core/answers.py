"""The golden set's rows file and how answers are compared: light (no torch, GX or tqdm).

The stages (through ``core.golden`` and ``core.evaluate``) and the rollout controller's probes read
the same file the same way and score answers by the same rule, so a probe's "right" is the gate's.
"""

from __future__ import annotations

import json
import re
import string
from pathlib import Path
from typing import Any

from core.stage import StageError

#: The rows file inside a golden set folder; images sit beside it, paths relative to it.
ROWS_FILE = "golden.jsonl"

_PUNCT = re.compile(f"[{re.escape(string.punctuation)}]")


def normalize_answer(text: str) -> str:
    """Lowercase, drop punctuation and collapse whitespace: 'Red.' and ' red' both become 'red'."""
    return " ".join(_PUNCT.sub(" ", text.lower()).split())


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
