"""Strict validation of Kubernetes manifests against the vendored KServe CRD schemas (no network).

A CRD's openAPIV3Schema leaves `additionalProperties` unset, and JSON Schema then accepts any
unknown field: `storageURI` instead of `storageUri` would pass. `strict()` closes every object
that lists its properties, except those Kubernetes itself leaves open
(`x-kubernetes-preserve-unknown-fields`). `metadata` is only `type: object` in a CRD; it is
narrowed here to the ObjectMeta fields these manifests may use.
"""

from __future__ import annotations

import copy
import json
from functools import cache
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft7Validator

SCHEMAS = Path(__file__).resolve().parents[2] / "deploy" / "kserve" / "schemas"
KINDS = {("serving.kserve.io/v1alpha1", "ClusterServingRuntime"): "clusterservingruntimes.json",
         ("serving.kserve.io/v1beta1", "InferenceService"): "inferenceservices.json"}
OBJECT_META = {"type": "object", "required": ["name"], "additionalProperties": False,
               "properties": {"name": {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
                                       "maxLength": 63},
                              "namespace": {"type": "string"},
                              "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                              "annotations": {"type": "object", "additionalProperties": {"type": "string"}}}}


def strict(schema: Any) -> Any:
    """A copy of `schema` in which every object with `properties` refuses unknown fields."""
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: (value if key in ("enum", "required", "default", "example") else strict(value))
           for key, value in schema.items()}
    if ("properties" in schema and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out


@cache
def validator(api_version: str, kind: str, closed: bool = True) -> Draft7Validator:
    schema = json.loads((SCHEMAS / KINDS[(api_version, kind)]).read_text())
    if closed:
        schema = strict(schema)
        schema["properties"]["metadata"] = copy.deepcopy(OBJECT_META)
        schema["required"] = sorted({*schema.get("required", []), "apiVersion", "kind", "metadata", "spec"})
    return Draft7Validator(schema)


def problems(document: dict, closed: bool = True) -> list[str]:
    """Every schema violation of one manifest, as 'path: message'."""
    key = (document.get("apiVersion", ""), document.get("kind", ""))
    if key not in KINDS:
        return [f"no vendored schema for {key[0]} {key[1]}"]
    found = validator(*key, closed=closed).iter_errors(document)
    return sorted(f"{'.'.join(str(p) for p in error.absolute_path) or '(root)'}: {error.message}" for error in found)


def load(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
