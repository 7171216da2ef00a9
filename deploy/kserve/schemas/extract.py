"""Vendor a KServe CRD's validation schema: `python extract.py CRD.yaml OUT.json`.

Keeps the storage version's `openAPIV3Schema` as it is, minus the `description` texts (about
two thirds of the bytes, no validation meaning). The CRDs come from github.com/kserve/kserve,
config/crd/full/ (the commit is recorded in OUT.json under `x-hotswap-source`). The tests add
`additionalProperties: false` when they load it (tests/deploy/kube_schema.py): the file stays
KServe's own.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

#: Keywords whose value is one subschema, a list of them, or a map of names to them.
ONE, MANY, MAP = ("items", "not", "additionalProperties"), ("allOf", "anyOf", "oneOf"), ("properties",)


def strip_descriptions(schema: object) -> object:
    """The schema without `description` keywords (a property that is *named* description stays)."""
    if not isinstance(schema, dict):
        return schema
    out = {}
    for key, value in schema.items():
        if key == "description":
            continue
        if key in ONE:
            out[key] = strip_descriptions(value)
        elif key in MANY:
            out[key] = [strip_descriptions(v) for v in value]
        elif key in MAP:
            out[key] = {name: strip_descriptions(v) for name, v in value.items()}
        else:
            out[key] = value
    return out


def main(crd_path: str, out_path: str, source: str = "") -> None:
    crd = yaml.safe_load(Path(crd_path).read_text())
    version = next(v for v in crd["spec"]["versions"] if v.get("storage"))
    schema = strip_descriptions(version["schema"]["openAPIV3Schema"])
    assert isinstance(schema, dict)
    schema["x-hotswap-source"] = {"crd": Path(crd_path).name, "group": crd["spec"]["group"],
                                  "kind": crd["spec"]["names"]["kind"], "version": version["name"], "from": source}
    Path(out_path).write_text(json.dumps(schema, separators=(",", ":"), sort_keys=True) + "\n")


if __name__ == "__main__":
    main(*sys.argv[1:])
