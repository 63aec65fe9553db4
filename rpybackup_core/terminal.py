"""Names as a person's terminal may be shown them.

A file name may hold any byte but "/" and NUL, and a snapshot's names come from a machine that
need not be trusted. Printed as they are, an escape sequence in a name would drive the reader's
terminal (move the cursor, rewrite what is on screen, set the window title), a newline would
forge a line of output, a bidirectional control would show the name reversed, and bytes that are
not UTF-8 would fail to print. JSON output needs none of this: it escapes such characters itself.
"""

from __future__ import annotations

# os.fsdecode keeps a byte that is not UTF-8 as a lone surrogate from this range.
_ESCAPED_BYTES = range(0xDC80, 0xDD00)


def printable(text: str) -> str:
    """``text`` with each character a terminal would act on or cannot show written as an
    escape (``\\x1b``, ``\\u202e``); a byte that is not UTF-8 shows as ``\\xe9``."""
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() else _escape(char) for char in text)


def _escape(char: str) -> str:
    code = ord(char)
    if code in _ESCAPED_BYTES:
        return f"\\x{code - 0xDC00:02x}"
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"
