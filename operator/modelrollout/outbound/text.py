"""Short texts from what a dependency said: errors stored in status or logged stay small."""

from __future__ import annotations

MAX_ERROR_TEXT = 300
"""Longest error text kept from a provider or webhook (a status message, a log field)."""

CUT_MARKER = " …[cut]"


def clip(text: str, limit: int = MAX_ERROR_TEXT) -> str:
    """``text`` if it fits in ``limit`` characters, else its start with :data:`CUT_MARKER`."""
    if len(text) <= limit:
        return text
    return text[: max(limit - len(CUT_MARKER), 0)] + CUT_MARKER
