"""What MLflow's UI shows of a registered version, each in MLflow's own place: the tensor signature
(an ``MLmodel`` descriptor next to the version's files: the version page's schema), the golden set as
the source run's evaluation dataset, and the registered model's description in plain words.

The signature comes from the packaged ``config.pbtxt`` (the one declaration of the tensor contract);
the dataset's digest is over the golden folder's files.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from google.protobuf import text_format
from mlflow.entities import Dataset, DatasetInput, InputTag
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT
from pydantic import BaseModel, ConfigDict
from tritonclient.grpc import model_config_pb2 as pb
from tritonclient.utils import triton_to_np_dtype

from core.contract import parse_config
from core.manifest import manifest_digest, tree_digests
from core.names import served_model_name
from registry.errors import UpstreamError
from registry.store import Store

#: MLflow's model descriptor, in the version's ``model/`` folder: the UI reads the schema from it.
#: Materialize leaves it out: it describes the version, it is not part of what Triton serves.
MLMODEL_FILE = "MLmodel"


class Tensor(BaseModel):
    """One tensor of the served contract, as numpy names its type; ``-1`` is a variable dimension."""

    model_config = ConfigDict(frozen=True)

    name: str
    dtype: str
    shape: tuple[int, ...]


class Signature(BaseModel):
    """The packaged config's inputs and outputs: what the version page's schema shows."""

    model_config = ConfigDict(frozen=True)

    inputs: tuple[Tensor, ...]
    outputs: tuple[Tensor, ...]


class EvaluationSet(BaseModel):
    """The golden set validate judged the build on: logged as the run's evaluation dataset."""

    model_config = ConfigDict(frozen=True)

    name: str
    #: Where it lives, as the stage was given it (``artifacts/golden``, a DVC output).
    source: str
    #: Short sha256 over its files (MLflow keeps at most 36 characters).
    digest: str
    #: What the UI lists beside it: ``questions`` (the rows validate asked) and ``files``.
    profile: dict[str, int]


def _numpy_dtype(data_type: int) -> str:
    """A config.pbtxt data type as numpy names it (``TYPE_STRING`` is ``object``), by tritonclient's table."""
    name = pb.DataType.Name(data_type)
    dtype = triton_to_np_dtype(name.removeprefix("TYPE_").replace("STRING", "BYTES"))
    if dtype is None:
        raise UpstreamError(f"config.pbtxt: data type {name} has no numpy equivalent")
    return np.dtype(dtype).name


def signature_of(config_file: Path) -> Signature:
    """The packaged config's tensors (``-1`` first where Triton batches)."""
    try:
        config = parse_config(config_file.read_text())
    except (OSError, text_format.ParseError) as exc:
        raise UpstreamError(f"{config_file}: cannot read its tensors ({exc}); rerun the package stage") from exc
    batch = (-1,) if config.max_batch_size > 0 else ()

    def tensors(specs: Any) -> tuple[Tensor, ...]:
        return tuple(Tensor(name=t.name, dtype=_numpy_dtype(t.data_type), shape=(*batch, *t.dims)) for t in specs)

    return Signature(inputs=tensors(config.input), outputs=tensors(config.output))


def evaluation_set(golden: Path, questions: int | None) -> EvaluationSet:
    """The golden folder as an MLflow dataset: a digest over its files and how many questions validate asked."""
    if not golden.is_dir():
        raise UpstreamError(f"{golden}: not found or not a folder; run the golden stage (`dvc repro`)")
    files = tree_digests(golden)
    profile = {"files": len(files)} | ({"questions": questions} if questions is not None else {})
    return EvaluationSet(
        name=golden.name, source=golden.as_posix(), digest=manifest_digest(files)[:16], profile=profile
    )


def log_evaluation_set(store: Store, run_id: str, golden: EvaluationSet) -> None:
    """The run's dataset input, in the evaluation context (the run page's "Datasets")."""
    dataset = Dataset(
        name=golden.name,
        digest=golden.digest,
        source_type="local",
        source=json.dumps({"uri": golden.source}),
        profile=json.dumps(golden.profile, sort_keys=True),
    )
    store.client.log_inputs(
        run_id, datasets=[DatasetInput(dataset, tags=[InputTag(MLFLOW_DATASET_CONTEXT, "evaluation")])]
    )


def write_mlmodel(run_id: str, artifact_path: str, signature: Signature, folder: Path) -> Path:
    """MLflow's ``MLmodel`` descriptor with the tensor signature (no flavor: Triton serves the files)."""
    # ModelSignature needs pandas, which the gateway image (which imports this module) lacks; only
    # registering, in the project's environment, gets here.
    from mlflow.models import Model
    from mlflow.models.signature import ModelSignature
    from mlflow.types import Schema, TensorSpec

    def schema(tensors: tuple[Tensor, ...]) -> Schema:
        return Schema([TensorSpec(np.dtype(t.dtype), t.shape, t.name) for t in tensors])

    path = folder / MLMODEL_FILE
    model = Model(artifact_path=artifact_path, run_id=run_id)
    model.signature = ModelSignature(inputs=schema(signature.inputs), outputs=schema(signature.outputs))
    model.save(str(path))
    return path


def model_description(model: str) -> str:
    """The registered model's description. Plain words and code spans: the UI renders it as Markdown,
    which took a ``<triton.model>`` placeholder for an HTML tag and showed "its own Triton model -v."."""
    return (
        "Qwen3-VL Triton model builds, one version per validated `dvc repro`. Aliases: candidate "
        "(validated), canary (taking a share of traffic), champion (taking the rest), previous-champion. "
        "Each version is served as its own Triton model, named in the version's triton.model tag: "
        f"version 3 is `{served_model_name(model, 3)}`. A version's page shows its accuracy and its "
        "tensor signature; its source run holds the golden set it was judged on and every stage's figures."
    )
