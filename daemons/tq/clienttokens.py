"""The client's token operations (tq-host keeps API tokens; a gateway acts for a token's user): a part of
tq.client.Client, kept here so that client.py stays one screenful of jobs."""

from __future__ import annotations

from typing import Any, Protocol


class _Caller(Protocol):
    def call(self, op: str, wait: float | None = None, **fields: Any) -> dict[str, Any]: ...


class TokenOps:
    """Make, list and revoke API tokens (root and admins), and act with one (root and `[access] gateways`)."""

    def token_create(self: _Caller, name: str, user: str, read_only: bool = False) -> dict[str, Any]:
        """A new token for `user`: `name`, `user`, `read_only` and `token`, its text, shown this once (tq-host
        keeps only its SHA-256)."""
        reply = self.call("token_create", name=name, user=user, read_only=read_only)
        return {k: reply[k] for k in ("name", "user", "read_only", "token")}

    def token_list(self: _Caller) -> list[dict[str, Any]]:
        """Every token: name, user, read_only, created_at (never its text)."""
        return [dict(t) for t in self.call("token_list")["tokens"]]

    def token_revoke(self: _Caller, name: str) -> dict[str, Any]:
        """Forget a token: refused from now on, on the connections that act with it too."""
        reply = self.call("token_revoke", name=name)
        return {k: reply[k] for k in ("name", "revoked")}

    def act_as(self: _Caller, token: str) -> dict[str, Any]:
        """From now on this connection's requests are the token user's: `user`, `token` (its name), `read_only`.
        Raises Unauthorized for an unknown or revoked token. (A reconnection after a failure starts as the
        caller again: act again.)"""
        reply = self.call("act_as", token=token)
        return {k: reply[k] for k in ("user", "token", "read_only")}
