"""tqctl's completion candidates (tq.ctl.complete) from its own parser; names from a stand-in for the host."""

from __future__ import annotations

from pathlib import Path

import pytest

from tq import ctl
from tq.ctl import complete

ASKED: list[tuple[str, dict[str, str]]] = []


def names(kind: str, where: dict[str, str]) -> list[str]:
    ASKED.append((kind, dict(where)))
    return {"tasks": ["resize", "report"], "queues": ["default", "mail"]}[kind]


def done(line: str) -> list[str] | None:
    return complete.candidates(ctl.build_parser(), line, names)


def test_commands_are_the_ones_help_lists() -> None:
    found = done("tqctl ")
    assert found is not None and {"submit", "status", "list", "show", "queues", "config"} <= set(found)
    assert "_complete" not in found
    assert done("tqctl st") == ["status"]
    assert done("tqctl --json st") == ["status"]


def test_options_of_the_command_being_typed() -> None:
    assert done("tqctl submit --wa") == ["--wait", "--wait-timeout"]
    assert "--config" in (done("tqctl --") or []) and "--batch" not in (done("tqctl --") or [])


def test_values_tasks_queues_choices_and_files() -> None:
    assert done("tqctl submit r") == ["resize", "report"]
    assert done("tqctl submit resize ") == []  # its arguments: anything
    assert done("tqctl submit --queue m") == ["mail"]
    assert done("tqctl pause ") == ["default", "mail"]
    assert done("tqctl list --state de") == ["delayed", "deferred", "dead"]
    assert done("tqctl config ") == ["check"]
    assert done("tqctl --config ") is None and done("tqctl submit --batch ") is None
    assert done("tqctl show ") == []


def test_token_actions_and_their_options() -> None:
    assert done("tqctl token ") == ["create", "list", "revoke"]
    assert {"--user", "--read-only"} <= set(done("tqctl token create --") or [])


def test_the_config_given_on_the_line_is_the_one_asked() -> None:
    ASKED.clear()
    done("tqctl --config /srv/tq.toml submit --queue ")
    done("tqctl --config=/srv/other.toml submit ")
    assert ASKED == [("queues", {"config": "/srv/tq.toml"}), ("tasks", {"config": "/srv/other.toml"})]


def test_the_gateway_given_on_the_line_is_the_one_asked() -> None:
    ASKED.clear()
    done("tqctl --url https://tq.example:8790 --token-file /home/me/tq.token --ca-file=/etc/ca.pem pause ")
    assert ASKED == [("queues", {"url": "https://tq.example:8790", "token_file": "/home/me/tq.token",
                                 "ca_file": "/etc/ca.pem"})]
    assert done("tqctl --token-file ") is None and done("tqctl --ca-file ") is None  # file names
    assert done("tqctl --url ") == []
    assert {"--url", "--token-file", "--ca-file"} <= set(done("tqctl --") or [])


@pytest.mark.parametrize(("line", "words"), [
    ("tqctl submit --queue=m", ["mail"]),  # bash's word is "m"
    ("tqctl submit --queue=", ["=default", "=mail"]),  # bash's word is "="
    ("tqctl submit 'res", ["resize"]),  # an open quote
])
def test_words_are_cut_where_bash_cuts_them(line: str, words: list[str]) -> None:
    assert done(line) == words


def test_configured_names_read_the_files_without_validating_them(tmp_path: Path) -> None:
    path = tmp_path / "tq.toml"
    path.write_text('[worker]\nqueues = ["a"]\nbad_key = 1\n[worker.3]\nqueues = ["b"]\n[tasks.resize]\nqueue = "c"\n'
                    '[tasks."#"]\nhandler = "echo"\n[queues.d]\n[exchanges.e]\nbindings = [{ queue = "f" }]\n')
    assert complete.configured_names("queues", str(path)) == {"default", "a", "b", "c", "d", "f"}
    assert complete.configured_names("tasks", str(path)) == {"resize"}
    assert complete.configured_names("tasks", str(tmp_path / "missing.toml")) == set()


def test_tqctl_complete_is_silent_when_nothing_answers(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "tq.toml").write_text("[host]\nsocket = 5\n")  # not even the socket path is right
    assert ctl.main(["_complete", "--", f"tqctl --config {tmp_path}/tq.toml submit --queue "]) == 0
    assert capsys.readouterr() == ("default\n", "")
    assert ctl.main(["_complete", "--", "tqctl --config "]) == complete.FILES
    assert "_complete" not in ctl.build_parser().format_help()
