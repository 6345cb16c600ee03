"""tqctl token: make, list and revoke the API tokens tq-host keeps for tq-gateway's callers (root and admins)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from ..client import Client
from . import options, render

if TYPE_CHECKING:
    from .options import Parser, Register, Subcommands


def _add_token(sub: Subcommands, common: Parser) -> None:
    t = sub.add_parser("token", parents=[common], help="API tokens for tq-gateway (root and admins)")
    actions = t.add_subparsers(dest="action", required=True, metavar="ACTION", parser_class=options.Parser)
    create = actions.add_parser("create", parents=[common], help="make a token (printed once: keep it)")
    create.add_argument("name", metavar="NAME", help="the token's name (letters, digits, _ . -)")
    create.add_argument("--user", required=True, help="the user it acts as (its jobs, its access rules)")
    create.add_argument("--read-only", action="store_true", help="it may only read (get, list, status ...)")
    create.set_defaults(handler=_cmd_create)
    actions.add_parser("list", parents=[common], help="the tokens (never their text)").set_defaults(
        handler=_cmd_list)
    revoke = actions.add_parser("revoke", parents=[common], help="forget a token: refused from now on")
    revoke.add_argument("name", metavar="NAME")
    revoke.set_defaults(handler=_cmd_revoke)


def _cmd_create(client: Client, args: argparse.Namespace, as_json: bool) -> int:
    made = client.token_create(args.name, args.user, read_only=args.read_only)
    render.say(made, made["token"], as_json)  # the token alone on stdout: `TOKEN=$(tqctl token create ...)`
    return 0


def _cmd_list(client: Client, args: argparse.Namespace, as_json: bool) -> int:
    tokens = client.token_list()
    if render.out_or_none(tokens, as_json, "no tokens (tqctl token create NAME --user USER makes one)"):
        return 0
    rows = [["NAME", "USER", "ACCESS", "CREATED", "STATE"]]
    for t in tokens:
        created = render.local_time(t["created_at"], "%Y-%m-%d %H:%M")
        rows.append([t["name"], t["user"], "read-only" if t["read_only"] else "read-write", created, _state(t)])
    render.table(rows)
    return 0


def _state(token: dict[str, Any]) -> str:
    """`usable`, or `unusable: WHY` (its user deleted, another account now, out of group tq); an older tq-host
    does not say: `-`."""
    if "usable" not in token:
        return "-"
    return "usable" if token["usable"] else f"unusable: {token.get('why')}"


def _cmd_revoke(client: Client, args: argparse.Namespace, as_json: bool) -> int:
    gone = client.token_revoke(args.name)
    render.say(gone, f"revoked token {gone['name']}", as_json)
    return 0


COMMANDS: dict[str, Register] = {"token": _add_token}
