"""The audit trail: a bounded, hash-chained list of :class:`HistoryEntry`.

Every entry carries ``seq`` (counting from the first entry ever, so it keeps growing when the
oldest entries are dropped), ``prev_hash`` (the ``hash`` of the entry before it) and ``hash``
(SHA-256 over the canonical JSON of the entry without ``hash``, ``prev_hash`` included).
Editing an entry breaks its own hash; deleting, inserting or reordering entries breaks ``seq``
continuity and the chain. Only the first *retained* entry's ``prev_hash`` cannot be checked once
older entries were dropped to honour the limit.

The canonical form is the entry's JSON wire form (camelCase keys, RFC 3339 times, ``null`` for
absent values), keys sorted, no whitespace: exactly what survives a status write and read, so a
status re-read from the apiserver verifies.

Size: the trail lives in ``.status`` and etcd refuses objects above 1.5 MiB. Entries keep at
most :data:`QUERY_KEEP` characters of each check's PromQL (a longer query is cut and ends with
its length and SHA-256, so the full text, re-rendered from the spec, can still be matched), and
the oldest entries are dropped while the trail's canonical JSON exceeds ``max_bytes``
(:data:`DEFAULT_MAX_BYTES`), whatever the count limit says. The newest entry is always kept.
An entry's reason and its checks' messages are capped when it is sealed
(:func:`modelrollout.api.models.cap_text`), so the hash covers what is stored.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

from modelrollout.api.models import HistoryEntry, cap_text

DEFAULT_LIMIT = 100
DEFAULT_MAX_BYTES = 512 * 1024
"""Budget of the whole trail's canonical JSON: a third of etcd's 1.5 MiB object limit."""
QUERY_KEEP = 1024
"""Characters of a check's PromQL an audit entry keeps verbatim."""


def compact_query(query: str | None, keep: int = QUERY_KEEP) -> str | None:
    """``query`` itself when it has at most ``keep`` characters; otherwise its head followed by
    ``... [<length> chars, sha256:<hex>]`` (the marker included, at most ``keep`` characters)."""
    if query is None or len(query) <= keep:
        return query
    digest = hashlib.sha256(query.encode("utf-8")).hexdigest()
    marker = f"... [{len(query)} chars, sha256:{digest}]"
    return query[: max(0, keep - len(marker))] + marker


def canonical_json(entry: HistoryEntry) -> str:
    """The bytes the hash is taken over (as text): the wire form without ``hash``."""
    data = entry.model_dump(mode="json", by_alias=True, exclude={"hash"})
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def entry_hash(entry: HistoryEntry) -> str:
    """Hex SHA-256 of :func:`canonical_json`."""
    return hashlib.sha256(canonical_json(entry).encode("utf-8")).hexdigest()


def append(
    history: list[HistoryEntry],
    entry: HistoryEntry,
    limit: int = DEFAULT_LIMIT,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> HistoryEntry:
    """Seal ``entry`` (seq, prev_hash, hash; queries compacted) and append it to ``history``
    in place.

    The oldest entries are dropped so at most ``limit`` remain and their canonical JSON fits
    ``max_bytes`` (the new entry always stays). ``entry`` itself is not modified; the sealed
    copy that was stored is returned.
    """
    if limit < 1:
        raise ValueError(f"history limit must be at least 1, got {limit}")
    last = history[-1] if history else None
    sealed = entry.model_copy(
        deep=True,
        update={
            "seq": last.seq + 1 if last is not None else 1,
            "prev_hash": last.hash if last is not None else None,
            "hash": None,
        },
    )
    sealed.reason = cap_text(sealed.reason)
    for metric in sealed.metrics:
        metric.query = compact_query(metric.query)
        metric.message = None if metric.message is None else cap_text(metric.message)
    sealed.hash = entry_hash(sealed)
    history.append(sealed)
    if len(history) > limit:
        del history[: len(history) - limit]
    sizes = [len(canonical_json(e).encode("utf-8")) + 64 for e in history]  # + hash, commas
    drop = 0
    while drop < len(history) - 1 and sum(sizes[drop:]) > max_bytes:
        drop += 1
    del history[:drop]
    return sealed


def verify(entries: Sequence[HistoryEntry]) -> list[str]:
    """Problems found in a chain (empty when intact): edited entries, gaps, broken links."""
    problems: list[str] = []
    previous: HistoryEntry | None = None
    for position, entry in enumerate(entries):
        label = f"entry {position} (seq {entry.seq}, {entry.event})"
        if entry.hash is None:
            problems.append(f"{label}: not sealed, it has no hash")
        elif entry.hash != entry_hash(entry):
            problems.append(f"{label}: hash mismatch, the entry was changed after it was recorded")
        if previous is None:
            if entry.seq < 1:
                problems.append(f"{label}: seq must be at least 1")
            elif entry.seq == 1 and entry.prev_hash is not None:
                problems.append(f"{label}: the first entry ever must not have a prevHash")
        else:
            if entry.seq != previous.seq + 1:
                problems.append(
                    f"{label}: gap in the sequence, expected seq {previous.seq + 1} after "
                    f"seq {previous.seq}"
                )
            if entry.prev_hash != previous.hash:
                problems.append(
                    f"{label}: broken chain, prevHash does not match the hash of seq {previous.seq}"
                )
        previous = entry
    return problems
