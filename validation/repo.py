"""Turn command-line paths into model configs, and index each repository for cross-model rules."""

from __future__ import annotations

import os
from pathlib import Path

from validation.findings import Finding, Severity
from validation.pbtxt import CONFIG_NAME, ParsedConfig, parse_config


class ModelIndex:
    """The models of one repository by folder name, each parsed at most once."""

    def __init__(self, repository: Path) -> None:
        self.repository = repository
        self._cache: dict[Path, ParsedConfig | Finding] = {}

    def load(self, config_path: Path) -> ParsedConfig | Finding:
        key = config_path.resolve()
        if key not in self._cache:
            self._cache[key] = parse_config(config_path)
        return self._cache[key]

    def get(self, name: str) -> ParsedConfig | None:
        """A sibling model as Triton finds it (``<repository>/<name>/config.pbtxt``), if readable."""
        if not name or "/" in name or name in (".", ".."):
            return None
        path = self.repository / name / CONFIG_NAME
        if not path.is_file():
            return None
        loaded = self.load(path)
        return loaded if isinstance(loaded, ParsedConfig) else None


def config_paths(path: Path) -> list[Path] | Finding:
    """The ``config.pbtxt`` files a path names: the file, a model folder's, or every model's of a repository."""
    if path.is_file():
        return [_with_folder_name(path)]
    if (path / CONFIG_NAME).is_file():
        return [_with_folder_name(path / CONFIG_NAME)]
    if not path.is_dir():
        return Finding(
            path, 0, 0, Severity.ERROR, "path",
            f"no such file or folder; expected a {CONFIG_NAME} file, a model folder or a model repository",
        )  # fmt: skip
    subfolders = [sub for sub in sorted(path.iterdir()) if sub.is_dir() and not sub.name.startswith(".")]
    if not _holds_a_config(path):
        if subfolders and all(sub.name.isascii() and sub.name.isdigit() for sub in subfolders):
            return [path / CONFIG_NAME]  # a model folder (only version folders) without its config
        return Finding(
            path, 0, 0, Severity.ERROR, "path",
            f"no {CONFIG_NAME} in this folder or under it; expected a {CONFIG_NAME} file, a model folder that holds "
            "one, or a model repository whose model folders hold theirs",
        )  # fmt: skip
    # Triton treats every subfolder of a repository as a model, so a folder without a config
    # is reported (as Triton's load would) rather than skipped. Hidden folders are not models.
    return [sub / CONFIG_NAME for sub in subfolders]


def _holds_a_config(folder: Path) -> bool:
    """Whether any non-hidden folder at or under ``folder`` has a config.pbtxt (stops at the first)."""
    for _root, dirs, files in os.walk(folder):
        if CONFIG_NAME in files:
            return True
        dirs[:] = [d for d in dirs if not d.startswith(".")]
    return False


def _with_folder_name(config_path: Path) -> Path:
    # The model's name is its folder's: "config.pbtxt" or "../config.pbtxt" alone do not say it.
    return config_path.absolute() if config_path.parent.name in ("", "..") else config_path
