"""One line on stderr in one write(): print(text, file=sys.stderr) writes the text and then the newline (two
write() calls: stderr writes through), so a reader of the pipe (a script, a follower's parent, the journal's
stream, a test awaiting the line) could read half a line. tqctl's errors and warnings, a follower's notices and a
daemon's lines before its logging is set up go through `line`."""

from __future__ import annotations

import sys


def line(text: str) -> None:
    sys.stderr.write(text + "\n")
    sys.stderr.flush()
