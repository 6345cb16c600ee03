"""The reply ledger: every reply decided in a loop step, held until the step's commit.

A reply that acknowledges a change or tells a job's outcome is sent only once the commit it depends on
succeeded (with durability = "full", once it is fsync'd: Store.commit); if that commit fails, `undo` turns it
into a refusal.
"""

from __future__ import annotations

from typing import Any

from .server import Conn

Reply = tuple[Conn, dict[str, Any], bool]  # connection, reply, whether it depends on this step's commit


class Ledger:
    def __init__(self) -> None:
        self.replies: list[Reply] = []  # one list for the ledger's life: Requests appends to it directly
        self.result_awaited = False  # a submit of this step waits for its job's result (submit_and_wait)

    def await_result(self) -> None:
        """A submit of this step waits for its job's result: the job goes out before the replies."""
        self.result_awaited = True

    def answer(self, conn: Conn, reply: dict[str, Any], durable: bool) -> None:
        self.replies.append((conn, reply, durable))

    def refuse(self, conn: Conn, rid: Any, code: str, error: str) -> None:
        self.replies.append((conn, {"rid": rid, "ok": False, "code": code, "error": error}, False))

    def acknowledging(self) -> bool:
        """Whether a reply decided this step acknowledges a change (a submit, a cancel, a finished wait): the
        step's commit must then be durable before it is sent."""
        return any(durable for _conn, _reply, durable in self.replies)

    def take(self) -> list[tuple[Conn, dict[str, Any]]]:
        """The replies decided since the last call, to send now that the step's commit succeeded."""
        replies = [(conn, reply) for conn, reply, _durable in self.replies]
        self.replies.clear()
        self.result_awaited = False
        return replies

    def refused_by_undo(self) -> set[tuple[int, str]]:
        """The requests (connection, rid) whose replies depend on this step's commit."""
        return {(id(c), repr(r.get("rid"))) for c, r, durable in self.replies if durable}

    def undo(self, refused: set[tuple[int, str]], error: str) -> None:
        """The step's commit failed: each reply that depended on it becomes a refusal; the other replies of
        those requests go (a refused request gets that one answer)."""
        self.replies[:] = [(c, {"rid": r.get("rid"), "ok": False, "code": "unavailable", "error": error}, False)
                           if durable else (c, r, False) for c, r, durable in self.replies
                           if durable or (id(c), repr(r.get("rid"))) not in refused]
