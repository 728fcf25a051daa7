"""Errors shared by every stage, and the one formatter of the lines the CLI prints for them.

A message quotes what the user gave (a value, a key, a path). Those can be huge (a 1 MB string in
params.yaml, a value built from YAML aliases, a pasted argument), so quoted values go through `quote`
(bounded work, at most MAX_QUOTE characters) and every printed line through `one_line` (one line, at most
MAX_LINE characters): a cut is marked with '…'.
"""

from __future__ import annotations

import reprlib

MAX_QUOTE = 200          # characters of one quoted value
MAX_LINE = 1000          # characters of one error line
ELLIPSIS = "…"           # marks where a value or a line was cut


class StageError(RuntimeError):
    """A stage cannot do its job; the message says what to do. The CLI prints it without a traceback."""


class _BoundedRepr(reprlib.Repr):
    """reprlib's repr (a few items of each container, a few levels deep), safe for any int."""

    def __init__(self) -> None:
        super().__init__()
        self.maxstring = self.maxother = self.maxlong = MAX_QUOTE
        self.maxlevel, self.maxlist, self.maxtuple, self.maxdict, self.maxset = 3, 8, 8, 8, 8
        self.fillvalue = ELLIPSIS

    def repr_int(self, x: int, level: int) -> str:
        # repr of an int past 4300 digits raises ValueError (CPython's int-to-str limit); its size will do.
        if x.bit_length() > 4 * MAX_QUOTE:
            return f"<an integer of {x.bit_length()} bits>"
        return super().repr_int(x, level)


_REPR = _BoundedRepr()


def clip(text: str, limit: int = MAX_QUOTE) -> str:
    """`text` cut to at most `limit` characters: its start and end kept, '…' in the middle."""
    if len(text) <= limit:
        return text
    head = (limit - len(ELLIPSIS)) * 2 // 3
    tail = limit - len(ELLIPSIS) - head
    return text[:head] + ELLIPSIS + (text[-tail:] if tail else "")


def quote(value: object, limit: int = MAX_QUOTE) -> str:
    """repr(value) for a message, at most `limit` characters; the work is bounded whatever the value's size
    (a value of a billion nested items costs as little as a short one)."""
    return clip(_REPR.repr(value), limit)


def one_line(message: object, limit: int = MAX_LINE) -> str:
    """A message as one line of at most `limit` characters (line breaks become ' | ', blank lines go)."""
    text = str(message)
    if len(text) > 4 * limit:      # joining lines costs as much as the text: cut first, keeping both ends
        text = clip(text, 4 * limit)
    lines = [line.strip() for line in text.splitlines()]
    return clip(" | ".join(line for line in lines if line), limit)
