"""Whether a daemon's service user can read a file its configuration names.

`tqctl config check` runs as root, who reads every file; tq-gateway runs as its own user (units/tq-gateway.service:
User=tq-gateway, Group=tq-gateway, SupplementaryGroups=tq; ProtectHome=yes and PrivateTmp=yes hide /home, /root,
/run/user, /tmp and /var/tmp from it). So, as root, config check looks at the TLS files as that user would:
owner, group and mode of the file and the search permission of each directory above it. Mode bits only: a file
or directory with a POSIX ACL is not judged (the ACL may grant what the bits refuse).
"""

from __future__ import annotations

import errno
import grp
import os
import pwd
import stat
from typing import NamedTuple

GATEWAY_USER = "tq-gateway"
GATEWAY_GROUPS = ("tq-gateway", "tq")  # the unit's Group= and SupplementaryGroups=
GATEWAY_KEYS = ("tls_cert", "tls_key")  # [gateway] keys naming a file tq-gateway reads at its start
HIDDEN = ("/home", "/root", "/run/user", "/tmp", "/var/tmp")  # from the unit: ProtectHome=yes, PrivateTmp=yes


class Who(NamedTuple):
    """A user as a service runs it: uid and every group id."""

    name: str
    uid: int
    gids: frozenset[int]


def service_user(name: str, groups: tuple[str, ...]) -> Who | None:
    """The user `name` with its groups and the unit's `groups`; None when there is no such user here."""
    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        return None
    gids = set(os.getgrouplist(name, pw.pw_gid))
    for group in groups:
        try:
            gids.add(grp.getgrnam(group).gr_gid)
        except KeyError:
            pass
    return Who(name, pw.pw_uid, frozenset(gids))


def why_unreadable(path: str, who: Who) -> str | None:
    """Why `who` cannot read the file at `path` (which this process can), or None if it can (or cannot be told)."""
    real = os.path.realpath(path)
    for hidden in HIDDEN:
        if real == hidden or real.startswith(hidden + "/"):
            return (f"{path} is under {hidden}, which the unit hides from user {who.name} "
                    "(ProtectHome=yes, PrivateTmp=yes): put it under /etc/tq")
    directory = os.path.dirname(real)
    above = [directory]
    while directory != "/":
        directory = os.path.dirname(directory)
        above.append(directory)
    for d in reversed(above):
        if not _allowed(d, who, 1):  # x: search
            return f"user {who.name} cannot search directory {d} ({_mode(d)}), so cannot read {path}"
    if not _allowed(real, who, 4):  # r
        return (f"user {who.name} cannot read {path} ({_mode(real)}): for example "
                f"`install -g {GATEWAY_USER} -m 0640` it")
    return None


def _allowed(path: str, who: Who, bit: int) -> bool:
    st = os.stat(path)
    if who.uid == 0 or _has_acl(path):
        return True
    if st.st_uid == who.uid:
        return bool(st.st_mode & (bit << 6))
    if st.st_gid in who.gids:
        return bool(st.st_mode & (bit << 3))
    return bool(st.st_mode & bit)


def _has_acl(path: str) -> bool:
    try:
        os.getxattr(path, "system.posix_acl_access")
    except OSError as e:
        return e.errno not in (errno.ENODATA, errno.ENOTSUP, errno.EOPNOTSUPP)  # (another error: not judged)
    return True


def _mode(path: str) -> str:
    """Owner, group and mode, as ls shows them."""
    st = os.stat(path)
    try:
        owner = pwd.getpwuid(st.st_uid).pw_name
    except KeyError:
        owner = str(st.st_uid)
    try:
        group = grp.getgrgid(st.st_gid).gr_name
    except KeyError:
        group = str(st.st_gid)
    return f"{owner}:{group} {stat.filemode(st.st_mode)}"
