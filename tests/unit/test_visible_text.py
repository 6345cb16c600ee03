"""Job text on an admin's terminal (tq.ctl.visible): control characters shown as escapes, so that what a
submitter put in a job's args, result or error cannot move the cursor, recolour or retitle the screen; ordinary
text and letters of any script as they are."""

from __future__ import annotations

import pytest

from tq.ctl import visible


@pytest.mark.parametrize("raw, one_line, lines", [
    ("plain text, ünïcödé, 日本語, مرحبا", "plain text, ünïcödé, 日本語, مرحبا", "plain text, ünïcödé, 日本語, مرحبا"),
    ("\x1b[31mred\x1b]0;title\x07", "\\x1b[31mred\\x1b]0;title\\x07", "\\x1b[31mred\\x1b]0;title\\x07"),
    ("a\x00b\x7fc\x9bd", "a\\x00b\\x7fc\\x9bd", "a\\x00b\\x7fc\\x9bd"),
    ("line 1\nline 2\r\n\tend", "line 1\\nline 2\\r\\n\\tend", "line 1\nline 2\\r\n\tend"),
    ("back\\slash", "back\\slash", "back\\slash"),
])
def test_control_characters_are_escaped_and_text_kept(raw: str, one_line: str, lines: str) -> None:
    assert visible.line(raw) == one_line
    assert visible.lines(raw) == lines


def test_a_bidirectional_override_is_escaped() -> None:
    assert visible.line("invoice\u202efdp.exe") == "invoice\\u202efdp.exe"
