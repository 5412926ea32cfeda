"""Convert a CRD's openAPIV3Schema into a JSON schema for offline validation (check-jsonschema).

    python k8s/schemas/crd_to_jsonschema.py CRD.yaml VERSION SOURCE > k8s/schemas/<kind>-<version>.json

SOURCE (repository, tag, commit, path of the CRD) goes into the schema's description, so the file says where
it came from. What the API server does that JSON Schema does not is made explicit:
- unknown fields: the API server rejects them (kubectl's default field validation is Strict), so every object
  with ``properties`` and no ``additionalProperties`` gets ``additionalProperties: false``, unless it says
  ``x-kubernetes-preserve-unknown-fields``;
- ``x-kubernetes-int-or-string`` becomes integer-or-string; ``nullable`` adds null;
- descriptions are dropped (the CRD keeps them), and so are ``x-kubernetes-*`` markers and the CEL rules
  (``x-kubernetes-validations``: most compare with the object's old version), except the top-level rules on
  ``metadata.name`` listed in NAME_RULES, which become a pattern and a maximum length;
- the document must name the CRD's apiVersion and kind, and carry metadata and spec; status is the
  controller's, so a manifest may not carry it.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import yaml

# CEL rules of a CRD's top level that JSON Schema can say, as what they require of metadata.name.
NAME_RULES = {
    "self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')": {"pattern": "^[a-z]([-a-z0-9]*[a-z0-9])?$"},
    "size(self.metadata.name) <= 63": {"maxLength": 63},
}


def convert(node: Any) -> Any:
    if isinstance(node, list):
        return [convert(item) for item in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "description" or key.startswith("x-kubernetes-") or key == "nullable":
            continue
        if key == "properties":
            out[key] = {name: convert(child) for name, child in value.items()}
        elif key in ("items", "additionalProperties", "not"):
            out[key] = convert(value) if isinstance(value, dict) else value
        elif key in ("anyOf", "allOf", "oneOf"):
            out[key] = convert(value)
        else:
            out[key] = value
    if node.get("x-kubernetes-int-or-string"):
        out.pop("anyOf", None)
        out["type"] = ["integer", "string"]
    if node.get("nullable") and "type" in out:
        out["type"] = [*([out["type"]] if isinstance(out["type"], str) else out["type"]), "null"]
    preserve = node.get("x-kubernetes-preserve-unknown-fields")
    if out.get("type") == "object" and "properties" in out and "additionalProperties" not in out and not preserve:
        out["additionalProperties"] = False
    return out


def main(argv: list[str]) -> int:
    crd_path, version, source = argv
    crd = yaml.safe_load(open(crd_path))
    (served,) = [v for v in crd["spec"]["versions"] if v["name"] == version]
    openapi = served["schema"]["openAPIV3Schema"]
    schema = convert(openapi)
    name: dict[str, Any] = {"type": "string"}
    for rule in openapi.get("x-kubernetes-validations", []):
        name.update(NAME_RULES.get(rule["rule"], {}))
    schema["properties"]["metadata"] = {"type": "object", "required": ["name"], "properties": {"name": name}}
    group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
    schema["properties"]["apiVersion"] = {"const": f"{group}/{version}"}
    schema["properties"]["kind"] = {"const": kind}
    schema["properties"].pop("status", None)
    schema["required"] = ["apiVersion", "kind", "metadata", "spec"]
    document = {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "$id": f"https://ftpipe.local/schemas/{kind.lower()}-{version}.json",
        "title": f"{kind} ({group}/{version})",
        "description": f"Converted by k8s/schemas/crd_to_jsonschema.py from the openAPIV3Schema of {source}.",
        **schema,
    }
    json.dump(document, sys.stdout, indent=1, sort_keys=False)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
