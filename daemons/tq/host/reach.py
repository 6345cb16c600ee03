"""Who reaches tq locally, as the kernel decides at the control socket (mode 0660, ownership.py): root, the daemons'
own user, and the members of the socket's group (tq where that group exists, as installed; else the daemons' own
group, which the socket then has). An API token acts only for such a user (host/tokens.py), so a token is no way
round the group: it is looked up when the token is made, at act_as and at each of its connection's re-checks, from
the system's database as it is then (not the login's groups, which a local user keeps until logging in again).
"""

from __future__ import annotations

import grp
import os
import pwd

from ..ownership import GROUP


def socket_group() -> grp.struct_group:
    """The group the control socket has: tq where it exists, else the daemons' own (ownership.restrict)."""
    try:
        return grp.getgrnam(GROUP)
    except KeyError:
        return grp.getgrgid(os.getegid())


def trusted(uid: int) -> bool:
    """Root or the daemons' own user: reach tq whatever their groups."""
    return uid in (0, os.geteuid())


def refusal(account: pwd.struct_passwd) -> str | None:
    """None if this user reaches tq locally, else why not (one line)."""
    if trusted(account.pw_uid):
        return None
    group = socket_group()
    if account.pw_gid == group.gr_gid or account.pw_name in group.gr_mem:
        return None
    return (f"user {account.pw_name[:40]} is not in group {group.gr_name}: only root, the daemons' user and members "
            f"of group {group.gr_name} reach tq, and a token acts only for them")
