"""Decoding the apiserver's JSON so that an object nobody can decode stays that object's problem.

A JSON decoder has a depth limit (orjson: 1,024 levels; the standard library's: the interpreter's
recursion limit), and the apiserver stores objects deeper than that: ``metadata.managedFields``
is stored as sent, and a cluster with an older CRD has a free-form pod template. One such object
in a watch stream or a list used to fail the whole stream (kopf's watcher, then the operator).

- :func:`decode_event` (a watch line) and :func:`decode_document` (a whole answer: a list or one
  object) decode with orjson; where that fails, they decode the parts one by one. What cannot be
  decoded of ``metadata.managedFields`` is dropped (nobody here reads it; it is dropped from
  every decoded object anyway). Anything else undecodable, or a ModelRollout spec nested deeper
  than validation allows (kopf deep-copies bodies), makes the object :class:`Undecodable`: its
  identity goes to the ``report`` callback, and in its place a watch gets a BOOKMARK carrying
  its resourceVersion (the stream resumes after it; a deletion is passed on as the object's
  identity alone) and a list leaves it out.
- The parts are found by :func:`_span`, a scanner that counts brackets instead of recursing.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Final

import orjson

from modelrollout.api.models import KIND
from modelrollout.api.validation import MAX_SPEC_DEPTH, deeper_than

_WS: Final = re.compile(rb"[ \t\r\n]*")
_STRUCTURE: Final = re.compile(rb'["{}\[\]]')
_STRING_REST: Final = re.compile(rb'[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_SCALAR: Final = re.compile(rb"[^,}\] \t\r\n]+")
_IDENTITY: Final = ("name", "namespace", "uid", "resourceVersion", "generation")


@dataclass(frozen=True)
class Undecodable:
    """An object left out because it could not be decoded, and why."""

    api_version: str
    kind: str
    namespace: str
    name: str
    uid: str
    resource_version: str
    reason: str

    def body(self) -> dict[str, Any]:
        """The object's identity as a body (what an Event about it needs)."""
        metadata = {"name": self.name, "namespace": self.namespace, "uid": self.uid}
        metadata["resourceVersion"] = self.resource_version
        return {"apiVersion": self.api_version, "kind": self.kind, "metadata": metadata}


Report = Callable[[Undecodable], None]


class _Bad(Exception):
    """Raised inside the scanner: not JSON at all."""


# ----------------------------------------------------------------------------- scanning


def _skip_ws(raw: bytes, pos: int) -> int:
    found = _WS.match(raw, pos)
    return found.end() if found else pos


def _span(raw: bytes, pos: int) -> int:
    """The end of the JSON value starting at ``pos`` (no leading whitespace)."""
    head = raw[pos : pos + 1]
    if head == b'"':
        rest = _STRING_REST.match(raw, pos + 1)
        if rest is None:
            raise _Bad("unterminated string")
        return rest.end()
    if head in (b"{", b"["):
        depth = 0
        while True:
            token = _STRUCTURE.search(raw, pos)
            if token is None:
                raise _Bad("unterminated object or list")
            pos = token.end()
            char = token.group()
            if char == b'"':
                rest = _STRING_REST.match(raw, pos)
                if rest is None:
                    raise _Bad("unterminated string")
                pos = rest.end()
            elif char in (b"{", b"["):
                depth += 1
            else:
                depth -= 1
                if depth == 0:
                    return pos
    scalar = _SCALAR.match(raw, pos)
    if scalar is None:
        raise _Bad(f"no value at {pos}")
    return scalar.end()


def _parts(raw: bytes, start: int) -> Iterator[tuple[str | int, int, int]]:
    """(key or index, start, end) of each member of the object or list at ``start``."""
    closing = b"}" if raw[start : start + 1] == b"{" else b"]"
    pos, index = _skip_ws(raw, start + 1), 0
    if raw[pos : pos + 1] == closing:
        return
    while True:
        key: str | int = index
        if closing == b"}":
            key_end = _span(raw, pos)
            key = str(orjson.loads(raw[pos:key_end]))
            pos = _skip_ws(raw, key_end)
            if raw[pos : pos + 1] != b":":
                raise _Bad(f"expected ':' at {pos}")
            pos = _skip_ws(raw, pos + 1)
        end = _span(raw, pos)
        yield key, pos, end
        pos, index = _skip_ws(raw, end), index + 1
        if raw[pos : pos + 1] == closing:
            return
        if raw[pos : pos + 1] != b",":
            raise _Bad(f"expected ',' at {pos}")
        pos = _skip_ws(raw, pos + 1)


def _members(raw: bytes, start: int, end: int) -> tuple[dict[str, Any], list[str]]:
    """The members of the object at ``raw[start:end]`` that decode, and the keys of those that
    do not."""
    try:
        whole = orjson.loads(raw[start:end])
    except orjson.JSONDecodeError:
        pass
    else:
        return (whole, []) if isinstance(whole, dict) else ({}, ["(not an object)"])
    if raw[start : start + 1] != b"{":
        return {}, ["(not an object)"]
    decoded: dict[str, Any] = {}
    failed: list[str] = []
    for key, value_start, value_end in _parts(raw, start):
        try:
            decoded[str(key)] = orjson.loads(raw[value_start:value_end])
        except orjson.JSONDecodeError:
            failed.append(str(key))
    return decoded, failed


# ----------------------------------------------------------------------------- objects


def _object(raw: bytes, start: int, end: int) -> tuple[dict[str, Any], str | None]:
    """The object at ``raw[start:end]`` and, if it is not whole, why (its identity is)."""
    body, failed = _members(raw, start, end)
    if "metadata" in failed:
        for key, value_start, value_end in _parts(raw, start):
            if key == "metadata":
                metadata, lost = _members(raw, value_start, value_end)
                body["metadata"] = metadata
                failed = [f for f in failed if f != "metadata"]
                failed += [f"metadata.{k}" for k in lost if k != "managedFields"]
    if failed:
        return body, f"{', '.join(failed)}: nested too deep to decode"
    return body, _too_deep(body)


def _too_deep(body: dict[str, Any]) -> str | None:
    spec = body.get("spec")
    if body.get("kind") == KIND and deeper_than(spec, MAX_SPEC_DEPTH):
        return f"spec nests objects and lists more than {MAX_SPEC_DEPTH} levels deep"
    return None


def _tidy(body: dict[str, Any]) -> dict[str, Any]:
    metadata = body.get("metadata")
    if isinstance(metadata, dict):
        metadata.pop("managedFields", None)
    return body


def _undecodable(body: dict[str, Any], reason: str) -> Undecodable:
    found = body.get("metadata")
    meta: dict[str, Any] = found if isinstance(found, dict) else {}
    ident = {k: str(meta.get(k) or "") for k in _IDENTITY}
    return Undecodable(
        api_version=str(body.get("apiVersion") or ""),
        kind=str(body.get("kind") or ""),
        namespace=ident["namespace"],
        name=ident["name"],
        uid=ident["uid"],
        resource_version=ident["resourceVersion"],
        reason=reason,
    )


def _bytes(text: str | bytes) -> bytes:
    return text.encode() if isinstance(text, str) else text


# ----------------------------------------------------------------------------- entry points


def decode_event(line: str | bytes, report: Report) -> Any:
    """One line of a watch stream: the event, or in place of an undecodable object a BOOKMARK
    with its resourceVersion (or, for DELETED, its identity alone)."""
    try:
        event = orjson.loads(line)
    except orjson.JSONDecodeError:
        return _salvage_event(_bytes(line), report)
    return _checked_event(event, report)


def _checked_event(event: Any, report: Report) -> Any:
    obj = event.get("object") if isinstance(event, dict) else None
    if isinstance(obj, dict):
        reason = _too_deep(obj)
        if reason is not None:
            return _skipped(event.get("type"), obj, reason, report)
        _tidy(obj)
    return event


def _salvage_event(raw: bytes, report: Report) -> Any:
    try:
        start = _skip_ws(raw, 0)
        event, failed = _members(raw, start, len(raw.rstrip()))
        if not failed:  # too deep as a whole, not member by member
            return _checked_event(event, report)
        if failed != ["object"]:
            raise _Bad(f"undecodable members {failed}")
        for key, value_start, value_end in _parts(raw, start):
            if key == "object":
                obj, reason = _object(raw, value_start, value_end)
                if reason is None:
                    return {**event, "object": _tidy(obj)}
                return _skipped(event.get("type"), obj, reason, report)
    except _Bad as exc:
        text = raw.decode(errors="replace")
        raise orjson.JSONDecodeError(f"not a watch event: {exc}", text, 0) from None
    raise orjson.JSONDecodeError("a watch event without an object", raw.decode(errors="replace"), 0)


def _skipped(kind: Any, obj: dict[str, Any], reason: str, report: Report) -> dict[str, Any]:
    lost = _undecodable(obj, reason)
    report(lost)
    if kind == "DELETED":
        return {"type": "DELETED", "object": lost.body()}
    bookmark = {"apiVersion": lost.api_version, "kind": lost.kind}
    return {"type": "BOOKMARK", "object": {**bookmark, "metadata": {
        "resourceVersion": lost.resource_version}}}  # fmt: skip


def decode_document(text: str | bytes, report: Report) -> Any:
    """A whole answer: a list without the items that cannot be decoded, or one object (only its
    identity, when it cannot be decoded)."""
    try:
        doc = orjson.loads(text)
    except orjson.JSONDecodeError:
        doc = None
    if isinstance(doc, dict):
        return _checked(doc, report)
    if doc is not None:
        return doc
    raw = _bytes(text)
    start = _skip_ws(raw, 0)
    if raw[start : start + 1] != b"{":
        raise orjson.JSONDecodeError("not a JSON object", raw.decode(errors="replace"), 0)
    try:
        body, failed = _members(raw, start, len(raw.rstrip()))
        if not failed:  # too deep as a whole, not member by member
            return _checked(body, report)
        if failed == ["items"]:
            body["items"] = list(_items(raw, start, body, report))
            return _checked(body, report)
        obj, reason = _object(raw, start, len(raw.rstrip()))
    except _Bad as exc:
        raise orjson.JSONDecodeError(str(exc), raw.decode(errors="replace"), 0) from None
    if reason is None:
        return _tidy(obj)
    lost = _undecodable(obj, reason)
    report(lost)
    return lost.body()


def _checked(doc: dict[str, Any], report: Report) -> dict[str, Any]:
    items = doc.get("items")
    if not isinstance(items, list):
        reason = _too_deep(doc)
        if reason is None:
            return _tidy(doc)
        lost = _undecodable(doc, reason)
        report(lost)
        return lost.body()
    kind = str(doc.get("kind") or "").removesuffix("List")
    kept = []
    for item in items:
        if not isinstance(item, dict):
            kept.append(item)
            continue
        reason = _too_deep({"kind": kind, **item})
        if reason is None:
            kept.append(_tidy(item))
        else:
            identity = {"kind": kind, "apiVersion": doc.get("apiVersion"), **item}
            report(_undecodable(identity, reason))
    doc["items"] = kept
    return doc


def _items(raw: bytes, start: int, doc: dict[str, Any], report: Report) -> Iterator[Any]:
    kind = str(doc.get("kind") or "").removesuffix("List")
    for key, value_start, _ in _parts(raw, start):
        if key != "items":
            continue
        for _, item_start, item_end in _parts(raw, value_start):
            item, reason = _object(raw, item_start, item_end)
            if reason is None:
                yield item
            else:
                report(_undecodable({"kind": kind, "apiVersion": doc.get("apiVersion"), **item},
                                    reason))  # fmt: skip
