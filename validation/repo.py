"""Turn command-line paths into model configs, and index each repository for cross-model rules."""

from __future__ import annotations

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
        return [path]
    if (path / CONFIG_NAME).is_file():
        return [path / CONFIG_NAME]
    if path.is_dir():
        # Triton treats every subfolder of a repository as a model, so a folder without a config
        # is reported (as Triton's load would) rather than skipped. Hidden folders are not models.
        return [sub / CONFIG_NAME for sub in sorted(path.iterdir()) if sub.is_dir() and not sub.name.startswith(".")]
    return Finding(path, 0, 0, Severity.ERROR, "path", f"{path}: no such config.pbtxt, model folder or repository")
