"""Read a ``config.pbtxt`` with Triton's own schema, the ``model_config_pb2`` tritonclient ships."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from validation.findings import Finding, Severity
from validation.locate import Locator, PathPart

CONFIG_NAME = "config.pbtxt"

# text_format prefixes its messages with "line:col : "; the finding carries those separately.
_POSITION_PREFIX = re.compile(r"^\d+:\d+ : ")


@dataclass(frozen=True, slots=True)
class ParsedConfig:
    """One model's config as Triton would read it, plus where each field sits in the file."""

    path: Path
    config: mc.ModelConfig
    locator: Locator

    @property
    def model_dir(self) -> Path:
        return self.path.parent

    @property
    def name(self) -> str:
        """The model's name as Triton uses it: the config's, else the folder's (Triton fills it in)."""
        return self.config.name or self.model_dir.name

    def finding(self, rule: str, message: str, *where: PathPart, severity: Severity = Severity.ERROR) -> Finding:
        """A finding at the field ``where`` (or its nearest written ancestor) of this file."""
        # A field that is missing altogether is reported at the model's name, else at the top.
        line, column = self.locator.position(*where)
        if line == 0:
            line, column = self.locator.position("name")
        return Finding(self.path, line or 1, column or 1, severity, rule, message)


def parse_config(path: Path) -> ParsedConfig | Finding:
    """The parsed config, or the one finding that explains why Triton could not read it."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        # Triton's own words when a model folder has no config and auto-complete is off.
        return Finding(
            path, 0, 0, Severity.ERROR, "config-missing",
            f"failed to open text file for read {path}: No such file or directory",
        )  # fmt: skip
    except (OSError, UnicodeDecodeError) as exc:
        return Finding(path, 0, 0, Severity.ERROR, "config-unreadable", f"failed to read {path}: {exc}")
    config = mc.ModelConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as exc:
        detail = _POSITION_PREFIX.sub("", str(exc))
        return Finding(
            path, exc.GetLine() or 0, exc.GetColumn() or 0, Severity.ERROR, "syntax",
            f"failed to read text proto from {path}: {detail}",
        )  # fmt: skip
    except ValueError as exc:
        # protobuf's parser lets this one out bare: an enum field given a number beyond 32 bits.
        return Finding(path, 0, 0, Severity.ERROR, "syntax", f"failed to read text proto from {path}: {exc}")
    return ParsedConfig(path, config, Locator(text))
