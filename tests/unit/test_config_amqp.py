"""[amqp] (tq-host's broker) and [transport] (a worker's way to tq-host): what they accept, the errors they give
(`file: key: reason`), and a broker password that appears nowhere: not in errors, not in the configuration's
repr, not in `tqctl config check`."""

from __future__ import annotations

import errno
import json
import socket
from pathlib import Path
from typing import Any

import pytest

from tq import configload, ctl
from tq.transport.amqp import AmqpMailboxes
from tq.transport.amqploop import AmqpLoop, lookup
from tq.transport.amqpparams import read_password
from tq.transport.amqpstate import describe
from tq.transport.machines import machine_instance
from tq.transport.mailbox import MailboxError

SECRET = "s3cr3t-pw"


def load(tmp_path: Path, text: str) -> configload.Config:
    path = tmp_path / "tq.toml"
    path.write_text(text)
    return configload.load(str(path))


def refused(tmp_path: Path, text: str) -> str:
    with pytest.raises(configload.ConfigError) as e:
        load(tmp_path, text)
    message = str(e.value)
    assert SECRET not in message and len(message.splitlines()) == 1
    return message


def test_the_host_s_broker_and_its_queues(tmp_path: Path) -> None:
    pw = tmp_path / "amqp.password"
    cfg = load(tmp_path, f'[amqp]\nurl = "amqp://tq@broker.example:5673/prod"\npassword_file = "{pw}"\n'
                         'queues = ["render", "video"]\nheartbeat = "5s"\n')
    url = cfg.amqp.url
    assert url is not None
    assert (url.user, url.host, url.port, url.vhost, url.password_file) == ("tq", "broker.example", 5673, "prod",
                                                                             str(pw))
    assert cfg.amqp.queues == ("render", "video") and cfg.amqp.heartbeat == 5.0
    assert url.masked() == "amqp://tq:***@broker.example:5673/prod"
    assert cfg.transport.kind == "posix" and cfg.transport.url is None


def test_a_worker_machine_takes_the_amqp_url_unless_its_own_is_given(tmp_path: Path) -> None:
    cfg = load(tmp_path, '[amqp]\nurl = "amqp://tq@10.0.0.1/"\npassword_file = "/etc/tq/pw"\n'
                         '[transport]\nkind = "amqp"\n')
    assert cfg.transport.url == cfg.amqp.url
    cfg = load(tmp_path, '[transport]\nkind = "amqp"\nurl = "amqp://w@[::1]:5672"\npassword_file = "/etc/tq/pw"\n')
    assert cfg.transport.url is not None and cfg.transport.url.masked() == "amqp://w:***@[::1]:5672/"


def test_a_password_in_the_url_is_kept_but_never_shown(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "tq.toml"
    path.write_text(f'[transport]\nkind = "amqp"\nurl = "amqp://tq:{SECRET}@127.0.0.1:5672/"\n')
    cfg = configload.load(str(path))
    assert cfg.transport.url is not None and cfg.transport.url.password == SECRET
    assert SECRET not in repr(cfg) and SECRET not in str(cfg.transport.url)
    assert ctl.main(["--config", str(path), "config", "check"]) == 0
    out = capsys.readouterr().out
    assert out.endswith("; broker amqp://tq:***@127.0.0.1:5672/\n") and SECRET not in out
    assert ctl.main(["--config", str(path), "--json", "config", "check"]) == 0
    reply = json.loads(capsys.readouterr().out)
    assert (reply["transport"], reply["broker"]) == ("amqp", "amqp://tq:***@127.0.0.1:5672/")


@pytest.mark.parametrize(("text", "expected"), [
    (f'[amqp]\nurl = "http://tq:{SECRET}@h/"\n', "amqp.url: expected amqp[s]://USER@HOST"),
    ('[amqp]\nurl = "amqp://tq@h/"\nca_file = "/etc/tq/ca.pem"\n', "amqp.ca_file: is for TLS: the url should be "
                                                                "amqps://"),
    ('[amqp]\nurl = "amqps://tq@h/"\nca_file = "ca.pem"\n', "amqp.ca_file: expected an absolute path"),
    ('[amqp]\nurl = "amqps://tq@h/"\nkey_file = "/k.pem"\n', "amqp.key_file: goes with cert_file"),
    ('[amqp]\ncert_file = "/c.pem"\n', "amqp.cert_file: goes with url"),
    ('[transport]\nca_file = "/ca.pem"\n', "transport.ca_file: goes with url"),
    (f'[amqp]\nurl = "amqp://:{SECRET}@h/"\n', "amqp.url: names no user"),
    (f'[amqp]\nurl = "amqp://tq:{SECRET}@h:99999/"\n', "amqp.url: expected amqp[s]://USER@HOST"),
    (f'[amqp]\nurl = "amqp://tq:{SECRET}@h/"\npassword_file = "/etc/pw"\n', "amqp.password_file: the url holds"),
    ('[amqp]\nurl = "amqp://tq@h/"\npassword_file = "pw"\n', "amqp.password_file: expected an absolute path"),
    ('[amqp]\nqueues = ["render"]\n', "amqp.queues: needs amqp.url"),
    ('[amqp]\nurl = "amqp://tq@h/"\nwindow = 0\n', "amqp.window: must be between 1 and 65535"),
    ('[transport]\nkind = "amqp"\n', 'transport.url: kind = "amqp" needs the broker'),
    ('[transport]\nkind = "carrier-pigeon"\n', "transport.kind: must be one of posix, amqp"),
    ('[transport]\nurl = "amqp://tq@h/"\n', 'transport.kind: url: for kind = "amqp"'),
    ('[amqp]\nurl = 5\n', "amqp.url: expected a string"),
    ('[transport]\nkind = "amqp"\nurl = "amqp://tq@h/"\nmachine = "render_3"\n', "transport.machine: expected a "
                                                                                "DNS label"),
    ('[transport]\nkind = "amqp"\nurl = "amqp://tq@h/"\nmachine = "-a"\n', "transport.machine: expected a DNS"),
    (f'[transport]\nkind = "amqp"\nurl = "amqp://tq@h/"\nmachine = "{"a" * 64}"\n', "transport.machine: expected"),
    ('[transport]\nkind = "amqp"\nurl = "amqp://tq@h/"\nmachine = 3\n', "transport.machine: expected a string"),
    ('[transport]\nmachine = "render-3"\n', 'transport.kind: machine: for kind = "amqp"'),
])
def test_a_bad_broker_setting_is_one_line_naming_file_and_key_without_the_password(
        tmp_path: Path, text: str, expected: str) -> None:
    message = refused(tmp_path, text)
    assert message.startswith(f"{tmp_path / 'tq.toml'}: {expected}"), message


def test_amqps_is_tls_on_port_5671_with_the_authority_and_this_side_s_certificate(tmp_path: Path) -> None:
    cfg = load(tmp_path, '[amqp]\nurl = "amqps://tq@broker.example/"\nca_file = "/etc/tq/ca.pem"\n'
                         'cert_file = "/etc/tq/w.pem"\nkey_file = "/etc/tq/w.key"\n[transport]\nkind = "amqp"\n')
    url = cfg.transport.url
    assert url is not None and url == cfg.amqp.url
    assert (url.tls, url.port, url.ca_file, url.cert_file, url.key_file) == (
        True, 5671, "/etc/tq/ca.pem", "/etc/tq/w.pem", "/etc/tq/w.key")
    assert url.masked() == "amqps://tq@broker.example:5671/"
    plain = load(tmp_path, '[amqp]\nurl = "amqp://tq@broker.example/"\n').amqp.url
    assert plain is not None and (plain.tls, plain.port) == (False, 5672)


def test_tls_files_that_cannot_be_loaded_are_a_clear_error_when_the_transport_opens(tmp_path: Path) -> None:
    from tq.transport.amqpparams import tls
    missing, junk = tmp_path / "missing.pem", tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    cfg = load(tmp_path, f'[amqp]\nurl = "amqps://tq@127.0.0.1/"\nca_file = "{missing}"\n')
    assert cfg.amqp.url is not None
    with pytest.raises(MailboxError, match=f"cannot load the broker's certificate authority from {missing}: "
                                           "No such file"):
        tls(cfg.amqp.url)
    cfg = load(tmp_path, f'[amqp]\nurl = "amqps://tq@127.0.0.1/"\ncert_file = "{junk}"\n')
    assert cfg.amqp.url is not None
    with pytest.raises(MailboxError, match=f"cannot load this side's certificate and key from {junk}: "):
        tls(cfg.amqp.url)
    system = load(tmp_path, '[amqp]\nurl = "amqps://tq@127.0.0.1/"\n').amqp.url
    assert system is not None
    options = tls(system)  # the system's authorities, and the host checked
    assert options is not None and options.server_hostname == "127.0.0.1"
    assert options.context.verify_mode.name == "CERT_REQUIRED" and options.context.check_hostname


def test_the_password_file_is_read_when_the_transport_opens_with_a_clear_error(tmp_path: Path) -> None:
    pw = tmp_path / "pw"
    cfg = load(tmp_path, f'[amqp]\nurl = "amqp://tq@127.0.0.1:1/"\npassword_file = "{pw}"\n')
    assert cfg.amqp.url is not None
    with pytest.raises(MailboxError, match=f"cannot read the broker's password from {pw}: No such file"):
        read_password(cfg.amqp.url)
    pw.write_text("\n")
    with pytest.raises(MailboxError, match="is empty"):
        read_password(cfg.amqp.url)
    pw.write_text(f"{SECRET}\n")
    assert read_password(cfg.amqp.url) == SECRET


def test_a_broker_host_that_does_not_resolve_is_no_error_at_start_but_looked_up_at_each_attempt(
        tmp_path: Path) -> None:
    import selectors
    cfg = load(tmp_path, '[amqp]\nurl = "amqp://tq:x@no-such-host.invalid/"\n')
    assert cfg.amqp.url is not None
    mailboxes = AmqpMailboxes(cfg, cfg.amqp.url, AmqpLoop(selectors.DefaultSelector()))
    assert mailboxes.session.params().host == "no-such-host.invalid"  # (not an address resolved once)
    found = lookup("no-such-host.invalid", 5672)
    assert isinstance(found, socket.gaierror)
    assert describe(found, "amqp://tq:***@no-such-host.invalid:5672/").startswith(
        "cannot resolve the broker's host in amqp://tq:***@no-such-host.invalid:5672/: ")


def test_addresses_of_a_family_the_process_may_not_open_are_dropped_and_none_left_is_the_socket_s_error(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # (a stand-in for a unit's RestrictAddressFamilies=: tests/system/test_amqp_package.py sees the real one)
    real = socket.socket
    refused: set[int] = set()

    def refusing(family: int = -1, *args: Any, **kwargs: Any) -> socket.socket:
        if family in refused:
            raise OSError(errno.EAFNOSUPPORT, "Address family not supported by protocol")
        return real(family, *args, **kwargs)
    monkeypatch.setattr(socket, "socket", refusing)
    stream = socket.SOCK_STREAM
    refused.add(socket.AF_INET6)
    assert lookup("127.0.0.1", 5672, socktype=stream) == socket.getaddrinfo("127.0.0.1", 5672, type=stream)
    refused.add(socket.AF_INET)
    found = lookup("127.0.0.1", 5672, socktype=stream)
    assert isinstance(found, OSError) and found.errno == errno.EAFNOSUPPORT
    assert describe(found, "amqp://x") == \
        "cannot reach the broker at amqp://x: Address family not supported by protocol"


def test_a_remote_worker_s_name_carries_its_machine() -> None:
    assert machine_instance("1", "render-3.example.org") == "1@render-3"


def test_transport_machine_names_the_machine_in_its_workers_names(tmp_path: Path) -> None:
    cfg = load(tmp_path, '[transport]\nkind = "amqp"\nurl = "amqp://tq@h/"\nmachine = "render-3b"\n')
    assert cfg.transport.machine == "render-3b" and machine_instance("1", cfg.transport.machine) == "1@render-3b"
    assert load(tmp_path, '[transport]\nkind = "amqp"\nurl = "amqp://tq@h/"\n').transport.machine == ""
    assert machine_instance("2", "odd name") == "2@odd-name"


@pytest.mark.parametrize(("before", "after", "changed"), [
    ('password_file = "/etc/tq/pw"', 'password_file = "/etc/tq/pw2"', ["amqp.password_file"]),
    ('ca_file = "/etc/tq/ca.pem"', 'ca_file = "/etc/tq/ca2.pem"', ["amqp.ca_file"]),
    ('password_file = "/etc/tq/pw"', "", ["amqp.password_file"]),
])
def test_a_reload_names_the_broker_key_that_changed_not_the_url(tmp_path: Path, before: str, after: str,
                                                                changed: list[str]) -> None:
    """'amqp.url changed' when only amqp.password_file did sent the operator looking at the wrong key."""
    def broker(host: str, keys: str) -> str:  # [transport] takes [amqp]'s broker: it is named once
        return f'[amqp]\nurl = "amqps://tq@{host}/"\nqueues = ["far"]\n{keys}\n[transport]\nkind = "amqp"\n'

    running, new = load(tmp_path, broker("10.0.0.1", before)), load(tmp_path, broker("10.0.0.1", after))
    kept, pending = configload.keep_for_restart(running, new, ("amqp.url", "amqp.queues", "transport.url"))
    assert pending == changed and kept.amqp.url == running.amqp.url and kept.transport.url == running.transport.url
    moved = load(tmp_path, broker("10.0.0.2", before))
    assert configload.keep_for_restart(running, moved, ("amqp.url", "transport.url"))[1][0] == "amqp.url"
