"""API tokens, kept by tq-host: a gateway (tq-gateway) acts for a token's user on its connection (act_as).

A token is 32 random bytes from `secrets`, shown once as `tq_` + URL-safe base64. The store keeps only its
SHA-256: a fast hash is right for a secret of 256 random bits (no dictionary to try, nothing for a slow hash's
stretching to protect), and it lets a request be checked with one dict lookup. The tokens are held in memory by
hash after the store is read at start.

act_as is taken only from root and the users of `[access] gateways`; after it the connection's uid and gid are
the token user's, so every access rule applies to that user unchanged. A token acts only for a user who reaches tq
locally (host/reach.py: root, the daemons' user, group tq), and only for the account it was made for: the uid the
user had then is kept with it. A connection that acts with a token is checked on each request (`check`): a
read-only token may only read, a revoked one may do nothing more, and one whose user is gone from the system, has
left group tq, or is another account of the same name (looked up again at most once a second) nothing either. A
plain local connection (conn.token None) is never looked at here. Only root makes or revokes a token that acts as
root or as the daemons' user: an admin may steer tq, not become it.
"""

from __future__ import annotations

import hashlib
import logging
import pwd
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from .. import config, control
from ..control import RequestError
from . import reach
from .access import Access
from .server import Conn
from .store import Store

TOKEN_PREFIX = "tq_"
MAX_TOKEN = 200  # characters: a longer "token" is no token of ours (and is not hashed)
ACCOUNT_RECHECK = 1.0  # seconds: how long a token user's uid and gid are taken as known on a connection
# The ops a read-only token may send: those that change nothing.
READING_OPS = frozenset({"ping", "get", "wait", "list", "status", "workers", "queues", "schedules", "subscribe",
                         "events", "metrics", "whoami"})


@dataclass(frozen=True)
class Token:
    name: str
    digest: bytes  # SHA-256 of the token's text
    user: str
    read_only: bool
    created_at: float
    uid: int | None  # the user's when the token was made (None: made before tq kept it; taken at first use)

    def public(self) -> dict[str, Any]:
        """What token_list shows: with whether it can act now (`why` not, as a request with it is refused)."""
        why = unusable(self, _account_of(self.user))
        return {"name": self.name, "user": self.user, "uid": self.uid, "read_only": self.read_only,
                "created_at": self.created_at, "usable": why is None, "why": why}


def unusable(token: Token, account: pwd.struct_passwd | None) -> str | None:
    """Why `token` cannot act for `account`, its user as the system has it now (None: no such user), or None if
    it can: the user is gone, is another account of the same name, or does not reach tq locally."""
    if account is None:
        made = f" (the token was made for uid {token.uid})" if token.uid is not None else ""
        return f"no user {token.user[:40]!r} on this system now{made}"
    if token.uid is not None and account.pw_uid != token.uid:
        return (f"made for uid {token.uid}; user {token.user[:40]!r} is now uid {account.pw_uid}, another "
                "account")
    return reach.refusal(account)


def digest(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()


class Tokens:
    def __init__(self, store: Store, access: Callable[[], Access], logger: logging.Logger) -> None:
        self.store, self.access, self.logger = store, access, logger
        self.by_hash: dict[bytes, Token] = {}
        self.by_name: dict[str, Token] = {}
        self.acting: dict[str, list[Conn]] = {}  # a token's name -> the connections that acted with it
        self.reload()

    def reload(self) -> None:
        """Read the tokens from the store (at start, and after a failed commit undid a change)."""
        tokens = [Token(*row) for row in self.store.tokens()]
        self.by_hash = {t.digest: t for t in tokens}
        self.by_name = {t.name: t for t in tokens}

    def ops(self) -> dict[str, Callable[[Conn, Any, dict[str, Any]], dict[str, Any]]]:
        return {"token_create": self.create_op, "token_list": self.list_op, "token_revoke": self.revoke_op,
                "act_as": self.act_as_op, "whoami": self.whoami_op}

    def check(self, conn: Conn, op: str) -> None:
        """Refuse a request on a connection that acts with a token: revoked, or read-only and `op` changes."""
        if not any(c is conn for c in self.acting.get(conn.token or "", ())):  # revoked (and made anew, maybe)
            raise RequestError("unauthorized", f"token {conn.token} was revoked: no valid token")
        if conn.read_only and op not in READING_OPS:
            raise RequestError("permission", f"permission denied: token {conn.token} is read-only")
        now = time.monotonic()
        if now - conn.account_at >= ACCOUNT_RECHECK:
            self._take_account(conn, self.by_name[conn.token or ""], now)

    def _take_account(self, conn: Conn, token: Token, now: float) -> None:
        """The connection acts as the token user's uid and gid as the system has them now, while that user is the
        account the token was made for and still reaches tq locally (deleted, made again, or out of group tq since
        the last look: refused)."""
        account = _account_of(token.user)
        if account is not None and token.uid is None:  # made before tq kept the uid: the first account it acts for
            token = self._bind(token, account.pw_uid)
        why = unusable(token, account)
        if account is None or why is not None:
            raise RequestError("unauthorized", f"token {token.name}: {why}")
        conn.uid, conn.gid, conn.account_at = account.pw_uid, account.pw_gid, now

    def _bind(self, token: Token, uid: int) -> Token:
        bound = replace(token, uid=uid)
        self.by_hash[bound.digest], self.by_name[bound.name] = bound, bound
        self.store.set_token_uid(bound.name, uid)
        self.logger.info("token %s made before tq kept uids acts for uid %d (user %s) from now on", bound.name, uid,
                         bound.user)
        return bound

    @staticmethod
    def _root_only(conn: Conn, uid: int | None, user: str, what: str) -> None:
        """Only root may make or revoke a token that acts as root; one that acts as the daemons' user, root or that
        user itself (a developer whose make run's daemons are theirs: a process of that user reaches tq as it
        anyway, so its token gives it nothing more)."""
        if uid is None or not reach.trusted(uid) or conn.uid == 0 or conn.uid == uid != 0:
            return
        who = "root" if uid == 0 else f"root and {user[:40]} itself"
        raise RequestError("permission", f"permission denied: only {who} may {what} a token that acts as "
                                         f"{user[:40]} (uid {uid})")

    def _steer(self, conn: Conn, what: str) -> None:
        refusal = self.access().may_steer(conn.uid, conn.gid, what)
        if refusal is not None:
            raise RequestError("permission", refusal)

    def create_op(self, conn: Conn, rid: Any, req: dict[str, Any]) -> dict[str, Any]:
        name = control.field(req, "name", str)
        user = control.field(req, "user", str)
        read_only = control.field(req, "read_only", bool, False)
        if not config.NAME_RE.fullmatch(name):
            raise RequestError("bad_request", f"invalid token name {name[:60]!r}: letters, digits, _ . -")
        self._steer(conn, "manage tokens")
        account = _account(user, "bad_request")
        refused = reach.refusal(account)
        if refused is not None:
            raise RequestError("permission", f"permission denied: {refused} (add {user} to the group first)")
        self._root_only(conn, account.pw_uid, user, "make")
        if name in self.by_name:
            raise RequestError("conflict", f"token {name} exists (tqctl token revoke {name} first)")
        text = TOKEN_PREFIX + secrets.token_urlsafe(32)
        token = Token(name, digest(text), user, read_only, time.time(), account.pw_uid)
        self.store.save_token(token.name, token.digest, token.user, token.read_only, token.created_at,
                              account.pw_uid)
        self.by_hash[token.digest], self.by_name[name] = token, token
        self.logger.info("token %s created for user %s%s by uid %d", name, user, " (read-only)" * read_only,
                         conn.uid)
        return {"name": name, "user": user, "read_only": read_only, "token": text}

    def list_op(self, conn: Conn, rid: Any, req: dict[str, Any]) -> dict[str, Any]:
        self._steer(conn, "manage tokens")
        return {"tokens": [t.public() for t in sorted(self.by_name.values(), key=lambda t: t.name)]}

    def revoke_op(self, conn: Conn, rid: Any, req: dict[str, Any]) -> dict[str, Any]:
        """Forget a token: it is refused from now on, on the connections that already acted with it too."""
        name = control.field(req, "name", str)
        self._steer(conn, "manage tokens")
        token = self.by_name.get(name)
        if token is None:
            raise RequestError("not_found", f"no token {name[:60]!r}")
        self._root_only(conn, token.uid if token.uid is not None else _uid_of(token.user), token.user, "revoke")
        del self.by_name[name], self.by_hash[token.digest]
        self.acting.pop(name, None)
        self.store.delete_token(name)
        self.logger.info("token %s revoked by uid %d", name, conn.uid)
        return {"name": name, "revoked": True}

    def act_as_op(self, conn: Conn, rid: Any, req: dict[str, Any]) -> dict[str, Any]:
        """From now on, this connection's requests are the token user's (uid and gid)."""
        text = control.field(req, "token", str)
        if conn.token is not None:
            raise RequestError("permission", f"permission denied: this connection acts with token {conn.token} "
                                             "already")
        gateways = self.access().cfg.access.gateways
        if conn.uid != 0 and _name_of(conn.uid) not in gateways:
            raise RequestError("permission", f"permission denied: uid {conn.uid} may not act for others: only root "
                                             "and [access] gateways")
        token = self.by_hash.get(digest(text)) if len(text) <= MAX_TOKEN else None
        if token is None:
            raise RequestError("unauthorized", "no valid token: unknown or revoked")
        self._take_account(conn, token, time.monotonic())
        conn.token, conn.read_only = token.name, token.read_only
        acting = self.acting.setdefault(token.name, [])
        acting[:] = [c for c in acting if not c.closed]
        acting.append(conn)
        return self.whoami_op(conn, rid, req)

    def whoami_op(self, conn: Conn, rid: Any, req: dict[str, Any]) -> dict[str, Any]:
        """Who the connection acts as (its token's user, or its own uid's) and what it may do now, by the rules
        and groups in force: uid and may_steer are what the page offers (tq-host decides each request): retry of
        the user's own jobs, or of any with pause and resume too (root, the daemons' user, an admin)."""
        token = self.by_name.get(conn.token) if conn.token is not None else None
        user = token.user if token is not None else _name_of(conn.uid) or f"uid {conn.uid}"
        may_steer = not conn.read_only and self.access().may_steer(conn.uid, conn.gid, "steer") is None
        return {"user": user, "token": conn.token, "read_only": conn.read_only, "uid": conn.uid,
                "may_steer": may_steer}


def _account(user: str, code: str) -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(user)
    except (KeyError, ValueError, UnicodeEncodeError):
        raise RequestError(code, f"no user {user[:40]!r} on this system") from None


def _account_of(user: str) -> pwd.struct_passwd | None:
    try:
        return pwd.getpwnam(user)
    except (KeyError, ValueError, UnicodeEncodeError):
        return None


def _uid_of(user: str) -> int | None:
    account = _account_of(user)
    return None if account is None else account.pw_uid


def _name_of(uid: int) -> str | None:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return None
