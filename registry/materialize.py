"""Build the serving Triton model repository: champion and canary, folders named by MLflow version."""

from __future__ import annotations

import logging
import re
import tempfile
from pathlib import Path

from google.protobuf import text_format
from pydantic import BaseModel
from tritonclient.grpc import model_config_pb2

from core.files import atomic_dir
from registry import manifest
from registry.errors import NotFoundError, RegistryError
from registry.publish import CONFIG, VERSION_DIR
from registry.state import VersionInfo, resolve
from registry.store import Store

log = logging.getLogger(__name__)
_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


class Materialized(BaseModel):
    out: Path
    triton_model: str
    versions: list[int]
    champion: int | None
    canary: int | None
    config_from: int


def _parse_config(path: Path, label: str) -> model_config_pb2.ModelConfig:
    try:
        return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())
    except (text_format.ParseError, OSError) as exc:
        raise RegistryError(f"{label}: {CONFIG} is not a valid Triton ModelConfig: {exc}") from exc


def _without_policy(config: model_config_pb2.ModelConfig) -> str:
    copy = model_config_pb2.ModelConfig()
    copy.CopyFrom(config)
    copy.ClearField("version_policy")
    return str(text_format.MessageToString(copy))


def serving_config(
    configs: dict[int, model_config_pb2.ModelConfig], prefer: int, model: str
) -> model_config_pb2.ModelConfig:
    """``prefer``'s config with ``version_policy`` set to exactly the served versions."""
    chosen = model_config_pb2.ModelConfig()
    chosen.CopyFrom(configs[prefer])
    if chosen.name and chosen.name != model:
        raise RegistryError(f"v{prefer}: {CONFIG} names model {chosen.name!r} but the version is {model!r}")
    chosen.name = model
    for version, config in configs.items():
        if version != prefer and _without_policy(config) != _without_policy(chosen):
            log.warning("v%d's %s differs from v%d's; serving uses v%d's", version, CONFIG, prefer, prefer)
    chosen.version_policy.specific.versions[:] = sorted(configs)
    return chosen


def _fetch_verified(store: Store, info: VersionInfo, into: Path) -> Path:
    """Download one version's artifact and check every file against its registered checksums."""
    label = f"{store.model} v{info.version}"
    expected = manifest.from_tags(info.tags, label)
    folder = store.download(info.source, into / str(info.version))
    manifest.verify(folder, expected, info.source)
    return folder


def materialize(store: Store, out: Path) -> Materialized:
    """Write ``out/<model>/{config.pbtxt,<N>/...}`` for the champion and canary, atomically."""
    champion, canary = resolve(store, "champion"), resolve(store, "canary")
    serving = {info.version: info for info in (champion, canary) if info is not None}
    if not serving:
        raise NotFoundError(f"{store.model} has no champion or canary to serve; promote a candidate first")
    names = {info.triton_model for info in serving.values()}
    if len(names) != 1 or None in names:
        raise RegistryError(
            f"champion and canary must be versions of one Triton model to share a repository, got {names}"
        )
    model = str(names.pop())
    if not _MODEL_NAME.fullmatch(model):
        # The name comes from an (unauthenticated) tag and becomes a folder: refuse anything path-like.
        raise RegistryError(
            f"{store.model}: Triton model name {model!r} from the version tags is not a plain folder name"
        )
    prefer = champion.version if champion is not None else next(iter(serving))
    out = out.resolve()
    with (
        atomic_dir(out) as tmp,
        tempfile.TemporaryDirectory(prefix=f".{out.name}.download-", dir=out.parent) as scratch,
    ):
        configs = {}
        (tmp / model).mkdir()
        for version, info in serving.items():
            folder = _fetch_verified(store, info, Path(scratch))
            configs[version] = _parse_config(folder / CONFIG, f"{store.model} v{version}")
            (folder / VERSION_DIR).rename(tmp / model / str(version))
            if version == prefer:
                # Model-level files (warmup data) come with the config they belong to.
                for entry in folder.iterdir():
                    if entry.name != CONFIG:
                        entry.rename(tmp / model / entry.name)
        config = serving_config(configs, prefer, model)
        (tmp / model / CONFIG).write_text(text_format.MessageToString(config))
    result = Materialized(
        out=out,
        triton_model=model,
        versions=sorted(serving),
        champion=champion.version if champion else None,
        canary=canary.version if canary else None,
        config_from=prefer,
    )
    log.info("materialized %s versions %s into %s", model, result.versions, out)
    return result
