"""tqctl's lines when it cannot reach tq-host's socket: a refused connect names the socket's owner and group, and
suggests joining group tq only where that is its group; with the default socket, the hint names TQ_CONFIG."""

from __future__ import annotations

import grp
import os
import socket
from pathlib import Path

import pytest

from tq import connection
from tq.clienterrors import HostUnreachable


def test_a_socket_of_another_user_and_group_is_named_as_theirs(tmp_path: Path) -> None:
    path = tmp_path / "tq.sock"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(path))
        os.chmod(path, 0o660)
        if os.geteuid() == 0:
            os.chown(path, 65534, grp.getgrnam("nogroup").gr_gid)
        st = os.stat(path)
        line = connection.denied(str(path))
    assert "group tq" not in line
    owner = connection.user_name(st.st_uid)
    group = connection.group_name(st.st_gid)
    assert line == (f"permission denied on {path}: it belongs to {owner} and {group} (mode 0660): run tqctl as "
                    "that user or a member of that group")


def test_a_socket_of_group_tq_says_to_join_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "tq.sock"
    path.touch()
    monkeypatch.setattr(connection, "group_name", lambda gid: "group tq")
    assert connection.denied(str(path)) == (f"permission denied on {path}: add yourself to group tq (sudo adduser "
                                            "$USER tq, then log in again)")


def test_the_default_socket_not_reachable_names_tq_config(tmp_path: Path) -> None:
    config = tmp_path / "tq.toml"
    config.write_text("[worker]\n")  # no host.socket: the default one
    c = connection.Connection(config=str(config))
    c.socket_path = str(tmp_path / "no.sock")  # (not the machine's /run/tq/tq.sock, which may be up)
    with pytest.raises(HostUnreachable) as e:
        c.call("status")
    assert str(e.value).endswith(f"(the default: no host.socket in {config}): No such file or directory (is it "
                                 "running? systemctl status tq-host; another tq's: set TQ_CONFIG or --config to its "
                                 "file)")
    named = connection.Connection(socket_path=str(tmp_path / "no.sock"))
    with pytest.raises(HostUnreachable, match=r"\(is it running\? systemctl status tq-host\)$"):
        named.call("status")
