"""What tqctl says about the configuration: `config check` calls nothing ok that is not (a missing default file,
a schedule or follow-up that no task matches, a TOML syntax error), and the other commands, which read only the
socket path, name the file they looked at and the socket they tried, and keep working past a drop-in that does
not parse. tqctl runs in-process, with the default file pointed at a temporary path."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tq import configfiles, configload, control, ctl


@pytest.fixture
def default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The default configuration file, moved to a temporary path that does not exist yet; no TQ_CONFIG."""
    path = tmp_path / "etc" / "tq.toml"
    path.parent.mkdir()
    monkeypatch.setattr(configfiles, "DEFAULT_CONFIG", str(path))
    monkeypatch.delenv("TQ_CONFIG", raising=False)
    return path


def test_config_check_refuses_a_missing_default_file_and_says_how_to_name_another(
        default: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert ctl.main(["config", "check"]) == control.EXIT_USAGE
    out, err = capsys.readouterr()
    assert out == "" and "ok" not in err
    assert err.startswith(f"tqctl: {default}: no such file") and "--config" in err and "TQ_CONFIG" in err
    assert len(err.splitlines()) == 1


def test_config_check_passes_the_default_file_once_it_exists(default: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    default.write_text('[tasks.t]\nhandler = "echo"\n')
    assert ctl.main(["config", "check"]) == 0
    assert capsys.readouterr().out == f"configuration ok: {default} (1 task(s))\n"


def test_the_daemons_still_run_on_defaults_without_the_default_file(default: Path) -> None:
    cfg = configload.load()
    assert cfg.tasks == () and cfg.host.socket == configfiles.DEFAULT_SOCKET


def test_an_unreachable_host_is_reported_with_the_socket_and_the_file_it_came_from(
        default: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    missing_socket = tmp_path / "gone.sock"
    monkeypatch.setattr(configfiles, "DEFAULT_SOCKET", str(missing_socket))
    assert ctl.main(["status"]) == control.EXIT_UNREACHABLE
    err = capsys.readouterr().err
    assert f"at {missing_socket}" in err and f"{default} does not exist" in err and "default" in err
    default.write_text(f'[host]\nsocket = "{tmp_path}/set.sock"\n')
    assert ctl.main(["status"]) == control.EXIT_UNREACHABLE
    err = capsys.readouterr().err
    assert f"at {tmp_path}/set.sock" in err and f"host.socket in {default}" in err


def test_a_dropin_that_does_not_parse_is_skipped_with_a_warning_and_config_check_names_its_line(
        default: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    default.write_text(f'[host]\nsocket = "{tmp_path}/main.sock"\n')
    (default.parent / "tq.d").mkdir()
    bad = default.parent / "tq.d" / "50-bad.toml"
    bad.write_text('[tasks.x]\nqueue = "mail"\n[tasks.y\n')
    assert ctl.main(["status"]) == control.EXIT_UNREACHABLE  # it tried the socket: the drop-in did not stop it
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith(f"tqctl: warning: {bad}: TOML syntax error: line 3") and "skipped" in err[0]
    assert f"at {tmp_path}/main.sock" in err[1]
    assert ctl.main(["config", "check"]) == control.EXIT_USAGE
    out, err2 = capsys.readouterr()
    assert out == "" and err2.startswith(f"tqctl: {bad}: TOML syntax error: line 3")
    assert ctl.main(["--json", "config", "check"]) == control.EXIT_USAGE
    assert json.loads(capsys.readouterr().out)["ok"] is False


def test_a_bad_key_in_a_dropin_does_not_stop_tqctl_either(default: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    default.write_text(f'[host]\nsocket = "{tmp_path}/main.sock"\n')
    (default.parent / "tq.d").mkdir()
    (default.parent / "tq.d" / "50-bad.toml").write_text('[tasks.x]\nqueueue = "mail"\n')
    assert ctl.main(["status"]) == control.EXIT_UNREACHABLE
    assert "warning" not in capsys.readouterr().err


@pytest.mark.parametrize(("toml", "key"), [
    ('[tasks.t]\nhandler = "echo"\n[schedules.nightly]\ncron = "@daily"\ntask = "tt"\n', "schedules.nightly.task"),
    ('[tasks.t]\non_success = "notify"\n', "tasks.t.on_success"),
    ('[tasks.t]\non_failure = "alert.page"\n[tasks."alert.*.x"]\nhandler = "echo"\n', "tasks.t.on_failure"),
])
def test_a_schedule_or_follow_up_naming_a_task_no_route_matches_is_refused(default: Path, toml: str, key: str,
                                                                           capsys: pytest.CaptureFixture[str]) -> None:
    default.write_text(toml)
    assert ctl.main(["config", "check"]) == control.EXIT_USAGE
    err = capsys.readouterr().err
    assert err.startswith(f"tqctl: {default}: {key}: no [tasks.*] table matches") and "known tasks: t" in err


@pytest.mark.parametrize("expression", ["0 0 30 2 *", "0 0 31 4 *", "0 0 31 2,4,6 *"])
def test_a_cron_expression_that_never_fires_is_refused(default: Path, expression: str,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """croniter reads these, and then finds no next date: tq-host once died of it at its reload and each start."""
    default.write_text(f'[tasks.t]\nhandler = "echo"\n[schedules.feb]\ncron = "{expression}"\ntask = "t"\n')
    assert ctl.main(["config", "check"]) == control.EXIT_USAGE
    err = capsys.readouterr().err
    assert err.startswith(f"tqctl: {default}: schedules.feb.cron: never fires: '{expression}'"), err
    assert len(err.splitlines()) == 1
    default.write_text('[tasks.t]\nhandler = "echo"\n[schedules.leap]\ncron = "0 0 29 2 *"\ntask = "t"\n')
    assert ctl.main(["config", "check"]) == 0  # every fourth year is not never


def test_a_schedule_whose_task_a_pattern_matches_passes(default: Path, capsys: pytest.CaptureFixture[str]) -> None:
    default.write_text('[tasks."report.*"]\non_failure = "alert"\n[tasks.alert]\n'
                       '[schedules.s]\nevery = "1h"\ntask = "report.daily"\n')
    assert ctl.main(["config", "check"]) == 0
    assert capsys.readouterr().out.startswith("configuration ok")


def test_a_task_pattern_that_can_match_nothing_is_a_warning(default: Path, capsys: pytest.CaptureFixture[str]) -> None:
    default.write_text('[tasks."task-*"]\nhandler = "echo"\n[tasks."a.*.#"]\n[tasks."b#c.x"]\n')
    assert ctl.main(["config", "check"]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("configuration ok")
    assert err.splitlines() == [
        f"tqctl: warning: {default}: tasks.task-*: 'task-*' matches no task: * and # are wildcards only as a whole "
        'dot-separated word ("task.*", not "task-*"), and no task name holds them',
        f"tqctl: warning: {default}: tasks.b#c.x: 'b#c.x' matches no task: * and # are wildcards only as a whole "
        'dot-separated word ("task.*", not "task-*"), and no task name holds them']


def test_a_password_in_a_broker_url_in_a_file_others_may_read_is_a_warning_naming_file_and_key(
        default: Path, capsys: pytest.CaptureFixture[str]) -> None:
    default.write_text('[amqp]\nurl = "amqp://tq:Sec-D-4711@broker.example/"\nqueues = ["remote"]\n')
    dropin = default.parent / "tq.d" / "50-amqp.toml"
    dropin.parent.mkdir()
    dropin.write_text('[transport]\nkind = "amqp"\nurl = "amqp://tq:Sec-D-4711@broker.example/"\n')
    default.chmod(0o644)
    dropin.chmod(0o640)  # root:tq, as the README says: no warning
    assert ctl.main(["config", "check"]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("configuration ok") and "Sec-D-4711" not in out + err
    assert err.splitlines() == [
        f"tqctl: warning: {default}: amqp.url: holds a password, and other users may read this file (mode o+r): "
        "put the password in password_file (install -m 0640 -g tq) and drop it from the url, or chmod o-r this file"]
    dropin.chmod(0o644)
    assert ctl.main(["config", "check"]) == 0
    assert f"{dropin}: transport.url: holds a password" in capsys.readouterr().err


def test_a_lease_no_longer_than_the_brokers_heartbeat_interval_and_a_second_is_a_warning(
        default: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """tq-host counts a remote worker's silence until the broker has been silent amqp.heartbeat / 2 + 1 s (its own
    link may be dead unnoticed): a lease no longer than that may find a remote worker lost while it is fine."""
    amqp = '[amqp]\nurl = "amqp://tq@broker.example/"\nqueues = ["remote"]\n'
    dropin = default.parent / "tq.d" / "50-lease.toml"
    dropin.parent.mkdir()
    dropin.write_text('[host]\nlease = "6s"\n')  # the default heartbeat, 10 s: 10 / 2 + 1
    default.write_text(amqp)
    assert ctl.main(["config", "check"]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("configuration ok")
    assert err.splitlines() == [
        f"tqctl: warning: {dropin}: host.lease: 6s is no longer than amqp.heartbeat / 2 + 1 s (6s), the broker's "
        "silence tq-host waits for before it stops counting remote workers' silence (its own link may be dead "
        "unnoticed): a remote worker may be presumed lost, and its jobs run again, while it is fine; set "
        "host.lease above 6s or amqp.heartbeat below 10s"]
    assert ctl.main(["--json", "config", "check"]) == 0
    assert len(json.loads(capsys.readouterr().out)["warnings"]) == 1
    dropin.write_text('[host]\nlease = "6.5s"\n')
    assert ctl.main(["config", "check"]) == 0
    assert capsys.readouterr().err == ""
    dropin.write_text("")  # the default lease, 10 s, with a heartbeat of 20 s: named by the heartbeat
    default.write_text(amqp + 'heartbeat = "20s"\n')
    assert ctl.main(["config", "check"]) == 0
    assert capsys.readouterr().err.splitlines() == [
        f"tqctl: warning: {default}: amqp.heartbeat: host.lease (10s) is no longer than amqp.heartbeat / 2 + 1 s "
        "(11s), the broker's silence tq-host waits for before it stops counting remote workers' silence (its own "
        "link may be dead unnoticed): a remote worker may be presumed lost, and its jobs run again, while it is "
        "fine; set host.lease above 11s or amqp.heartbeat below 18s"]
    default.write_text('[host]\nlease = "1s"\n[amqp]\nheartbeat = "20s"\n')  # no queues: no remote worker
    assert ctl.main(["config", "check"]) == 0
    assert capsys.readouterr().err == ""


def test_a_user_or_group_this_system_does_not_know_is_a_warning(default: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    default.write_text('[access]\nadmins = ["root", "tqt-nosuch-group"]\ngateways = ["tqt-nosuch-gw"]\n'
                       '[queues.mail]\nsubmit = ["root", "@root", "tqt-alcie", "@tqt-nogroup"]\n')
    assert ctl.main(["config", "check"]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("configuration ok")
    assert [line.removeprefix(f"tqctl: warning: {default}: ").split(": ", 1) for line in err.splitlines()] == [
        ["access.admins", "no group 'tqt-nosuch-group' on this system (a typo? it stays in the rule: a group made "
                          "later counts)"],
        ["access.gateways", "no user 'tqt-nosuch-gw' on this system (a typo? it stays in the rule: a user made "
                            "later counts)"],
        ["queues.mail.submit", "no user 'tqt-alcie' on this system (a typo? it stays in the rule: a user made "
                               "later counts)"],
        ["queues.mail.submit", "no group 'tqt-nogroup' on this system (a typo? it stays in the rule: a group made "
                               "later counts)"]]
    assert all(line.startswith(f"tqctl: warning: {default}: ") for line in err.splitlines())
    assert ctl.main(["--json", "config", "check"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["ok"] is True and len(shown["warnings"]) == 4
    default.write_text("")  # the defaults' tq-admin and tq-gateway, which a machine without tq lacks: no warning
    assert ctl.main(["config", "check"]) == 0
    assert capsys.readouterr().err == ""


def test_config_check_shows_the_gateways_and_refuses_a_group_or_a_bad_name_among_them(
        default: Path, capsys: pytest.CaptureFixture[str]) -> None:
    default.write_text('[access]\ngateways = ["web-gw"]\n')
    assert ctl.main(["--json", "config", "check"]) == 0
    assert json.loads(capsys.readouterr().out)["gateways"] == ["web-gw"]
    default.write_text("")
    assert configload.load().access.gateways == ("tq-gateway",)  # the default
    for bad in ('["@tq"]', '["no spaces"]', '"tq-gateway"'):
        default.write_text(f"[access]\ngateways = {bad}\n")
        assert ctl.main(["config", "check"]) == control.EXIT_USAGE
        err = capsys.readouterr().err
        assert "access.gateways" in err and len(err.splitlines()) == 1, err


@pytest.mark.parametrize(("table", "key", "tls"), [
    ("amqp", "password_file", False), ("transport", "password_file", False), ("amqp", "ca_file", True),
    ("transport", "cert_file", True), ("amqp", "key_file", True), ("gateway", "tls_cert", None),
    ("gateway", "tls_key", None),
])
def test_a_file_a_daemon_reads_at_its_start_that_is_missing_or_no_file_is_an_error(
        default: Path, tmp_path: Path, table: str, key: str, tls: bool | None,
        capsys: pytest.CaptureFixture[str]) -> None:
    """It passed as ok, and the daemon then stopped at its next start."""
    good = tmp_path / "good.pem"
    good.write_text("x\n")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)

    def write(path: Path) -> None:
        if table == "gateway":
            other = "tls_key" if key == "tls_cert" else "tls_cert"
            text = f'[gateway]\n{key} = "{path}"\n{other} = "{good}"\n'
        else:
            kind = 'kind = "amqp"\n' if table == "transport" else ""
            scheme = "amqps" if tls else "amqp"
            text = f'[{table}]\n{kind}url = "{scheme}://tq@broker/"\n{key} = "{path}"\n'
            if key == "key_file":
                text += f'cert_file = "{good}"\n'
        default.write_text(text)

    write(good)
    assert ctl.main(["config", "check"]) == 0, capsys.readouterr().err
    capsys.readouterr()
    for path, reason in ((tmp_path / "gone", "No such file or directory"), (tmp_path, "is not a regular file"),
                         (fifo, "is not a regular file")):
        write(path)
        assert ctl.main(["config", "check"]) == control.EXIT_USAGE
        out, err = capsys.readouterr()
        assert out == "" and err.startswith(f"tqctl: {default}: {table}.{key}: ") and reason in err, err
        assert str(path) in err and len(err.splitlines()) == 1, err
    assert ctl.main(["--json", "config", "check"]) == control.EXIT_USAGE
    reply = json.loads(capsys.readouterr().out)
    assert reply["ok"] is False and f"{table}.{key}" in reply["error"] and len(reply["errors"]) == 1


@pytest.mark.skipif(os.geteuid() != 0, reason="runs the check as another user (setpriv)")
def test_a_file_the_user_running_the_check_cannot_read_is_an_error_naming_the_user() -> None:
    with tempfile.TemporaryDirectory() as where:  # (pytest's tmp_path is root's alone: nobody could read tq.toml)
        tmp_path = Path(where)
        tmp_path.chmod(0o755)
        _check_as_nobody(tmp_path)


def _check_as_nobody(tmp_path: Path) -> None:
    secret = tmp_path / "amqp.password"
    secret.write_text("pw\n")
    secret.chmod(0o600)
    conf = tmp_path / "tq.toml"
    conf.write_text(f'[amqp]\nurl = "amqp://tq@broker/"\npassword_file = "{secret}"\n')
    conf.chmod(0o644)
    env = {**os.environ, "PYTHONPATH": str(Path(ctl.__file__).parents[2])}
    r = subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", sys.executable, "-m",
                        "tq.ctl", "--config", str(conf), "config", "check"], env=env, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == control.EXIT_USAGE and r.stdout == "", r
    assert r.stderr == (f"tqctl: {conf}: amqp.password_file: cannot read {secret}: Permission denied (as user "
                        "nobody, who runs this check)\n"), r.stderr
