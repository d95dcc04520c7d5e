"""Quoting user data in error messages, bounded: a message never grows with what a client sent.

A client can send a value whose text is huge (a long string, a YAML list, an integer of many thousands of
digits, which ``repr`` even refuses to print) or whose repr is huge; every message that quotes user data
goes through ``quote`` (a value's repr) or ``cap`` (text already made): at most ``MAX_QUOTE`` characters.
"""

from __future__ import annotations

import reprlib
from typing import Any

#: The most characters of user data a message quotes.
MAX_QUOTE = 80

_repr = reprlib.Repr()
_repr.maxstring = MAX_QUOTE
_repr.maxother = MAX_QUOTE
_repr.maxlong = MAX_QUOTE
_repr.maxlist = _repr.maxtuple = _repr.maxdict = _repr.maxset = 6
_repr.maxlevel = 3


def cap(text: str, limit: int = MAX_QUOTE) -> str:
    """``text`` cut to ``limit`` characters, marking the cut with ``...``."""
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


def quote(value: Any, limit: int = MAX_QUOTE) -> str:
    """A bounded ``repr`` of ``value`` (nested containers and long numbers abbreviated)."""
    try:
        text = _repr.repr(value)
    except Exception:  # a repr that refuses (an integer past the digit limit) or fails
        text = f"<{type(value).__name__}>"
    return cap(text, limit)
