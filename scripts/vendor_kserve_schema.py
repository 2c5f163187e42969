"""Regenerate tests/deploy/kserve-v1beta1-inferenceservice.schema.json from a KServe Python SDK wheel.

The InferenceService is a custom resource, so kubernetes-validate has no schema for it. KServe's SDK
models (``kserve/models/v1beta1_*.py``, generated from the CRD's Go types) list every field with its
JSON name and type; this script turns the classes an InferenceService reaches into a strict JSON
schema (unknown fields are errors) whose Kubernetes types point into kubernetes-validate's own
definitions (``https://kubernetes.io/api/_definitions.json``), so a Container or a Volume inside the
predictor is checked exactly as in a Deployment.

    pip download kserve==0.21.0 --no-deps -d /tmp/kserve
    SCHEMAS=.venv/lib/python3.11/site-packages/kubernetes_validate/kubernetes-json-schema
    python scripts/vendor_kserve_schema.py /tmp/kserve/kserve-0.21.0-py3-none-any.whl \
        --definitions $SCHEMAS/v1.31.0-local-strict/_definitions.json \
        --out tests/deploy/kserve-v1beta1-inferenceservice.schema.json
"""

from __future__ import annotations

import argparse
import ast
import json
import re
import sys
import zipfile
from pathlib import Path
from typing import Any

ROOT_CLASS = "V1beta1InferenceService"
K8S_DEFINITIONS = "https://kubernetes.io/api/_definitions.json"
_PRIMITIVES: dict[str, dict[str, Any]] = {
    "str": {"type": "string"},
    "int": {"type": "integer"},
    "float": {"type": "number"},
    "bool": {"type": "boolean"},
    "object": {},
}
_REQUIRED = re.compile(r"Invalid value for `(\w+)`, must not be `None`")


_CLASS = re.compile(r"^class (\w+)\(object\):", re.MULTILINE)


def _class_tables(source: str) -> tuple[dict[str, str], dict[str, str], set[str]]:
    tree = ast.parse(source)
    tables: dict[str, dict[str, str]] = {}
    for node in ast.walk(tree):
        if not isinstance(node, ast.Assign) or len(node.targets) != 1:
            continue
        target = node.targets[0]
        if isinstance(target, ast.Name) and target.id in ("openapi_types", "attribute_map"):
            tables[target.id] = ast.literal_eval(node.value)
    return tables["openapi_types"], tables["attribute_map"], set(_REQUIRED.findall(source))


class Builder:
    def __init__(self, wheel: zipfile.ZipFile, k8s_definitions: dict[str, Any]) -> None:
        self.wheel = wheel
        self.k8s = k8s_definitions
        self.defs: dict[str, Any] = {}
        self.unresolved: set[str] = set()
        # Class name -> model file (acronyms make the file names irregular: ``v1beta1_lgb_server_spec``).
        self.files: dict[str, str] = {}
        for name in wheel.namelist():
            if name.startswith("kserve/models/") and name.endswith(".py"):
                for cls in _CLASS.findall(wheel.read(name).decode()):
                    self.files[cls] = name

    def type_schema(self, spec: str) -> dict[str, Any]:
        if spec in _PRIMITIVES:
            return dict(_PRIMITIVES[spec])
        if match := re.fullmatch(r"list\[(.+)\]", spec):
            return {"type": "array", "items": self.type_schema(match.group(1))}
        if match := re.fullmatch(r"dict\(str, (.+)\)", spec):
            return {"type": "object", "additionalProperties": self.type_schema(match.group(1))}
        if re.match(r"V\d+(alpha|beta)\d+", spec):
            self.add_class(spec)
            return {"$ref": f"#/$defs/{spec}"}
        return self.k8s_ref(spec)

    def k8s_ref(self, spec: str) -> dict[str, Any]:
        if spec == "ResourceQuantity":
            name = "io.k8s.apimachinery.pkg.api.resource.Quantity"
        elif match := re.fullmatch(r"K8sIoApi(\w+?)(V\d\w*?)([A-Z]\w+)", spec):
            name = f"io.k8s.api.{match.group(1).lower()}.{match.group(2).lower()}.{match.group(3)}"
        elif match := re.fullmatch(r"(V\d+(?:alpha\d+|beta\d+)?)([A-Z]\w+)", spec):
            version, kind = match.group(1).lower(), match.group(2)
            candidates = sorted(key for key in self.k8s if key.endswith(f".{version}.{kind}"))
            core = [key for key in candidates if key.startswith("io.k8s.api.core.")]
            name = (core or candidates or [""])[0]
        else:
            name = ""
        if name not in self.k8s:
            self.unresolved.add(spec)  # Knative status types, or newer than the definitions: accepted as is
            return {}
        return {"$ref": f"{K8S_DEFINITIONS}#/$defs/{name}"}

    def add_class(self, cls: str) -> None:
        if cls in self.defs:
            return
        self.defs[cls] = {}  # placeholder: classes refer to each other
        if cls not in self.files:  # a hand-written SDK type (e.g. a quantity string): kept open
            self.unresolved.add(cls)
            return
        source = self.wheel.read(self.files[cls]).decode()
        types, names, required = _class_tables(source)
        properties = {names[attr]: self.type_schema(spec) for attr, spec in sorted(types.items())}
        schema: dict[str, Any] = {"type": "object", "properties": properties, "additionalProperties": False}
        if required:
            schema["required"] = sorted(names[attr] for attr in required)
        self.defs[cls] = schema


def build(wheel_path: Path, definitions_path: Path) -> dict[str, Any]:
    k8s = json.loads(definitions_path.read_text())["$defs"]
    with zipfile.ZipFile(wheel_path) as wheel:
        builder = Builder(wheel, k8s)
        builder.add_class(ROOT_CLASS)
    root = dict(builder.defs[ROOT_CLASS])
    root["properties"] = {
        **root["properties"],
        "apiVersion": {"const": "serving.kserve.io/v1beta1"},
        "kind": {"const": "InferenceService"},
        "metadata": {"$ref": f"{K8S_DEFINITIONS}#/$defs/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"},
    }
    root["required"] = ["apiVersion", "kind", "metadata", "spec"]
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://kserve.github.io/schemas/serving.kserve.io/v1beta1/inferenceservice.json",
        "$comment": (
            f"Generated by scripts/vendor_kserve_schema.py from {wheel_path.name} (PyPI: "
            "https://pypi.org/project/kserve/, source https://github.com/kserve/kserve, "
            "python/kserve/kserve/models/v1beta1_*.py). Kubernetes types refer to kubernetes-validate's "
            f"definitions. Types kept open: {', '.join(sorted(builder.unresolved)) or 'none'}."
        ),
        **root,
        "$defs": {name: schema for name, schema in sorted(builder.defs.items()) if name != ROOT_CLASS},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("wheel", type=Path)
    parser.add_argument("--definitions", type=Path, required=True, help="kubernetes-validate's _definitions.json")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    schema = build(args.wheel, args.definitions)
    args.out.write_text(json.dumps(schema, indent=1, sort_keys=False) + "\n")
    sys.stderr.write(f"wrote {args.out} ({len(schema['$defs'])} KServe types)\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
