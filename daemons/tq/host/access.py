"""Who may do what, by the caller's uid and gid from SO_PEERCRED (the kernel's word, not the client's).

Trusted: root and the daemons' own user. A job can be cancelled or retried by
the user who submitted it and by members of the `[access] admins` groups;
`[queues.NAME] submit` names the users and @groups who may submit to a queue
(without it, every member of group tq, who alone reach the socket). Each
refusal says which rule refused.
"""

from __future__ import annotations

import grp
import os
import pwd
import time
from collections.abc import Callable

from .. import config

MAX_CALLERS_CACHED = 4096
GROUPS_FRESH = 1.0  # seconds a caller's groups, once read, are taken as they are (as a token's user is checked)

Groups = tuple[str | None, frozenset[str]]  # a uid's name and the names of its groups


class Access:
    def __init__(self, cfg: config.Config, clock: Callable[[], float] = time.monotonic) -> None:
        self.cfg, self.clock = cfg, clock
        self.trusted = {0, os.geteuid()}
        # Who may whatever the rules, as each refusal says: root and the daemons' own user (tq, as installed).
        self.anyway = "root" if os.geteuid() == 0 else f"root, the daemons' user ({_name_of(os.geteuid())})"
        # A caller's name and groups, read again when older than GROUPS_FRESH: a user taken out of an admin group
        # (gpasswd -d) is no admin a second later, without a reload.
        self._read: dict[tuple[int, int], tuple[float, Groups]] = {}

    def may_submit(self, uid: int, gid: int, queue: str) -> str | None:
        """None if the caller may submit to `queue`, else why not."""
        rule = self.cfg.queues.get(queue)
        if rule is None or rule.submit is None or uid in self.trusted or self._is_admin(uid, gid):
            return None
        name, groups = self._groups(uid, gid)
        if name in rule.submit or any(f"@{g}" in rule.submit for g in groups):
            return None
        return (f"permission denied: queue {queue} takes submits only from {', '.join(rule.submit)} "
                f"([queues.{queue}] submit); you are {name or f'uid {uid}'}")

    def may_change(self, uid: int, gid: int, submitter: int | None, what: str, job_id: int) -> str | None:
        """None if the caller may cancel or retry a job of `submitter`, else why not."""
        if uid in self.trusted or uid == submitter or self._is_admin(uid, gid):
            return None
        admins = ", ".join(self.cfg.access.admins) or "none"
        return (f"permission denied: only its submitter (uid {submitter}), {self.anyway} and members of the admin "
                f"groups ({admins}; [access] admins) may {what} job {job_id}")

    def may_steer(self, uid: int, gid: int, what: str) -> str | None:
        """None if the caller may steer tq (pause, resume, forget a worker, manage tokens), else why not: root,
        the daemons' user and the admin groups may."""
        if uid in self.trusted or self._is_admin(uid, gid):
            return None
        admins = ", ".join(self.cfg.access.admins) or "none"
        return (f"permission denied: only {self.anyway} and members of the admin groups ({admins}; [access] "
                f"admins) may {what}")

    @staticmethod
    def who(uid: int) -> str:
        """A caller as an event names it: "uid N (name)", or "uid N" for a uid the system does not know."""
        name = _name_of(uid)
        return name if name.startswith("uid ") else f"uid {uid} ({name})"

    def _groups(self, uid: int, gid: int) -> Groups:
        now = self.clock()
        read = self._read.get((uid, gid))
        if read is None or now - read[0] >= GROUPS_FRESH:
            if len(self._read) >= MAX_CALLERS_CACHED:
                self._read.clear()
            read = self._read[(uid, gid)] = (now, _groups_of(uid, gid))
        return read[1]

    def _is_admin(self, uid: int, gid: int) -> bool:
        _name, groups = self._groups(uid, gid)
        return any(g in groups for g in self.cfg.access.admins)


def _name_of(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def _groups_of(uid: int, gid: int) -> Groups:
    """The user name of `uid` and the names of its groups (primary and supplementary) from the system's database."""
    try:
        name: str | None = pwd.getpwuid(uid).pw_name
    except KeyError:
        name = None
    gids = set(os.getgrouplist(name, gid)) if name is not None else {gid}
    names = set()
    for g in gids:
        try:
            names.add(grp.getgrgid(g).gr_name)
        except KeyError:
            pass
    return name, frozenset(names)
