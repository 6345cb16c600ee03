"""Job text made safe for a terminal: args, results, errors and unique keys come from whoever submitted the job
(any member of group tq), so their control characters (ESC, BEL, NUL, CR, the C1 range, the bidirectional
overrides) are shown as escapes such as `\\x1b` in tqctl's human output, where they would otherwise act on the
admin's terminal. Letters of every script and a backslash stay as they are; --json is left alone (JSON escapes
them itself)."""

from __future__ import annotations


def _escape(code: int) -> str:
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


_CONTROLS = [*range(0x20), 0x7F, *range(0x80, 0xA0), *range(0x202A, 0x202F), *range(0x2066, 0x206A)]
_LINE = {code: _escape(code) for code in _CONTROLS} | {0x09: "\\t", 0x0A: "\\n", 0x0D: "\\r"}
_LINES = _LINE | {0x09: "\t", 0x0A: "\n"}


def line(text: str) -> str:
    """`text` on one line: every control character escaped, newlines and tabs too (`\\n`, `\\t`)."""
    return text.translate(_LINE)


def lines(text: str) -> str:
    """`text` with its lines and tabs kept, every other control character escaped (a CR as `\\r`: it would let
    a line overwrite what came before it)."""
    return text.translate(_LINES)
