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
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

from modelrollout.api.models import HistoryEntry

DEFAULT_LIMIT = 100


def canonical_json(entry: HistoryEntry) -> str:
    """The bytes the hash is taken over (as text): the wire form without ``hash``."""
    data = entry.model_dump(mode="json", by_alias=True, exclude={"hash"})
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def entry_hash(entry: HistoryEntry) -> str:
    """Hex SHA-256 of :func:`canonical_json`."""
    return hashlib.sha256(canonical_json(entry).encode("utf-8")).hexdigest()


def append(
    history: list[HistoryEntry], entry: HistoryEntry, limit: int = DEFAULT_LIMIT
) -> HistoryEntry:
    """Seal ``entry`` (seq, prev_hash, hash) and append it to ``history`` in place.

    The oldest entries are dropped so at most ``limit`` remain. ``entry`` itself is not
    modified; the sealed copy that was stored is returned.
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
    sealed.hash = entry_hash(sealed)
    history.append(sealed)
    if len(history) > limit:
        del history[: len(history) - limit]
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
