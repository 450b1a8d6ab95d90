"""Generate the structural schema of ``spec.template`` from Kubernetes' own OpenAPI definition
of ``io.k8s.api.core.v1.PodTemplateSpec``.

``python -m modelrollout.api.podtemplate_gen SWAGGER`` reads a Kubernetes ``swagger.json``: the
one in the source tree the lab builds its control plane from (Debian's ``kubernetes`` 1.20.2,
``api/openapi-spec/swagger.json``), or an apiserver's own (``kubectl get --raw /openapi/v2``).
It writes two files next to this module, both committed, so building the CRD needs neither the
network nor a cluster:

- ``openapi/podtemplatespec.source.json``: the definitions PodTemplateSpec refers to, verbatim,
  with the SHA-256 of the file they came from;
- ``openapi/podtemplatespec.schema.json``: the structural schema made of them (a unit test
  regenerates it from the source file and compares).

The conversion, definition by definition:

- every ``$ref`` is inlined (PodTemplateSpec refers to nothing recursively; a cycle is an error);
- ``IntOrString`` and ``Quantity`` (a number or a string on the wire: ``cpu: 1``, ``cpu: 500m``)
  become ``x-kubernetes-int-or-string``;
- descriptions are left out (with them the CRD is too big for ``kubectl apply``'s
  last-applied annotation; ``kubectl explain deployment.spec.template`` documents the fields);
- strategic-merge-patch and union hints, which CRD schemas do not know, are left out; a list-map
  whose keys are not all required (``Container.ports``: ``protocol`` defaults in the native API
  only) stays a plain list, as a CRD list-map needs every key required;
- ``ObjectMeta.managedFields`` is left out: the apiserver's own bookkeeping, meaningless in a
  template, and its ``FieldsV1`` trie is the one free-form object in the closure.

Nothing in the result preserves unknown fields: the apiserver prunes whatever the schema does
not name, so a tenant cannot nest anything deeper than the schema goes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

Schema = dict[str, Any]

ROOT: Final = "io.k8s.api.core.v1.PodTemplateSpec"
INT_OR_STRING_DEFINITIONS: Final = frozenset(
    {
        "io.k8s.apimachinery.pkg.util.intstr.IntOrString",
        "io.k8s.apimachinery.pkg.api.resource.Quantity",
    }
)
EXCLUDED: Final[dict[str, frozenset[str]]] = {
    "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta": frozenset({"managedFields"}),
}
_KEPT: Final = (
    "type", "format", "required", "properties", "additionalProperties", "items",
    "x-kubernetes-list-type", "x-kubernetes-list-map-keys", "x-kubernetes-map-type",
)  # fmt: skip
HERE: Final = Path(__file__).parent / "openapi"
SOURCE_FILE: Final = HERE / "podtemplatespec.source.json"
SCHEMA_FILE: Final = HERE / "podtemplatespec.schema.json"


class GenerationError(ValueError):
    """The definitions cannot be turned into a structural schema."""


def _ref_name(ref: str) -> str:
    prefix = "#/definitions/"
    if not ref.startswith(prefix):
        raise GenerationError(f"unsupported $ref {ref!r}")
    return ref[len(prefix) :]


def closure(definitions: dict[str, Schema], root: str = ROOT) -> dict[str, Schema]:
    """The definitions ``root`` refers to, directly or not, itself included (sorted by name)."""
    found: set[str] = set()
    pending = [root]
    while pending:
        name = pending.pop()
        if name in found:
            continue
        if name not in definitions:
            raise GenerationError(f"definition {name!r} is missing")
        found.add(name)
        pending.extend(_refs(definitions[name]))
    return {name: definitions[name] for name in sorted(found)}


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        own = [_ref_name(node["$ref"])] if "$ref" in node else []
        return own + [r for value in node.values() for r in _refs(value)]
    if isinstance(node, list):
        return [r for value in node for r in _refs(value)]
    return []


class _Converter:
    def __init__(self, definitions: dict[str, Schema]) -> None:
        self._definitions = definitions
        self._path: list[str] = []  # definitions being inlined, to refuse a cycle

    def definition(self, name: str) -> Schema:
        if name in self._path:
            raise GenerationError(f"recursive definition: {' -> '.join([*self._path, name])}")
        if name in INT_OR_STRING_DEFINITIONS:
            return _int_or_string()
        self._path.append(name)
        try:
            return self.node(self._definitions[name], EXCLUDED.get(name, frozenset()))
        finally:
            self._path.pop()

    def node(self, node: Schema, excluded: frozenset[str] = frozenset()) -> Schema:
        if "$ref" in node:
            return self.definition(_ref_name(node["$ref"]))
        if node.get("format") == "int-or-string":
            return _int_or_string()
        if "type" not in node:
            raise GenerationError(f"a schema without a type: {sorted(node)}")
        out: Schema = {}
        for key in _KEPT:
            if key not in node:
                continue
            value = node[key]
            if key == "properties":
                value = {k: self.node(v) for k, v in sorted(value.items()) if k not in excluded}
            elif key in ("items", "additionalProperties"):
                value = self.node(value)
            elif key == "required":
                value = sorted(v for v in value if v not in excluded)
            out[key] = value
        return _valid_list_map(out)


def _int_or_string() -> Schema:
    return {"anyOf": [{"type": "integer"}, {"type": "string"}], "x-kubernetes-int-or-string": True}


def _valid_list_map(node: Schema) -> Schema:
    """A list-map needs every key required in its items; otherwise a plain list."""
    if node.get("x-kubernetes-list-type") != "map":
        return node
    required = set(node["items"].get("required", []))
    if set(node.get("x-kubernetes-list-map-keys", [])) <= required:
        return node
    return {k: v for k, v in node.items() if not k.startswith("x-kubernetes-list-")}


def generate(definitions: dict[str, Schema]) -> Schema:
    """The structural schema of PodTemplateSpec from swagger ``definitions``."""
    return _Converter(definitions).definition(ROOT)


def source_document(swagger_text: bytes) -> Schema:
    """What ``openapi/podtemplatespec.source.json`` holds: the closure, and where it came from."""
    swagger = json.loads(swagger_text)
    return {
        "origin": {
            "info": swagger.get("info", {}),
            "sha256": hashlib.sha256(swagger_text).hexdigest(),
            "root": ROOT,
        },
        "definitions": closure(swagger["definitions"]),
    }


def dump(value: Any) -> str:
    return json.dumps(value, indent=1, sort_keys=True, ensure_ascii=False) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m modelrollout.api.podtemplate_gen",
        description="Regenerate spec.template's schema from a Kubernetes swagger.json.",
    )
    parser.add_argument("swagger", type=Path, help="swagger.json (source tree or /openapi/v2)")
    args = parser.parse_args(argv)
    source = source_document(args.swagger.read_bytes())
    SOURCE_FILE.write_text(dump(source), encoding="utf-8")
    SCHEMA_FILE.write_text(dump(generate(source["definitions"])), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
