"""JSON too deep for decoders (orjson stops at 1,024 levels, the json module sooner), written as
text: json.dumps itself cannot write it. Shared by the unit tests of the decoding and the lab."""

from __future__ import annotations

API = "modelrollout.dev/v1alpha1"
DEPTH = 1100
"""The depth of the issue's object: past every decoder's limit."""


def nested(levels: int = DEPTH, key: str = "a") -> str:
    """JSON text of an object ``levels`` deep."""
    return f'{{"{key}":' * levels + "{}" + "}" * levels


def rollout(name: str, rv: str, spec: str = '{"replicas": 1}', managed: str = "[]") -> str:
    """A ModelRollout as the apiserver sends it, with ``spec`` and ``managedFields`` as text."""
    meta = (
        f'{{"name":"{name}","namespace":"ml","uid":"uid-{name}","resourceVersion":"{rv}",'
        f'"generation":2,"labels":{{"team":"a"}},"managedFields":{managed}}}'
    )
    return f'{{"apiVersion":"{API}","kind":"ModelRollout","metadata":{meta},"spec":{spec}}}'


def event(kind: str, obj: str) -> str:
    """A watch line."""
    return f'{{"type":"{kind}","object":{obj}}}'
