from __future__ import annotations

import re
from pathlib import Path

import pytest

from tq import config, configfiles, configload


def write(tmp_path: Path, text: str, name: str = "tq.toml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_defaults_apply_without_keys(tmp_path: Path) -> None:
    cfg = configload.load(write(tmp_path, ""))
    assert cfg.host.durability == "full"
    assert cfg.mqueue.max_message_size == 8192
    assert cfg.worker.queues == ("default",)
    assert cfg.tasks == ()


def test_shipped_config_is_valid_and_routes_unknown_tasks_to_echo() -> None:
    cfg = configload.load(str(Path(__file__).resolve().parents[2] / "etc/tq/tq.toml"))
    task = cfg.task_for("task-1")
    assert task is not None and task.handler == "echo"


def test_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, "[host]\nstate_dir = \n")
    with pytest.raises(configload.ConfigError) as e:
        configload.load(path)
    assert path in str(e.value) and "line 2" in str(e.value)


def test_unknown_key_names_file_and_key(tmp_path: Path) -> None:
    path = write(tmp_path, "[host]\nsocket = \"/tmp/x.sock\"\nsokcet = 1\n")
    with pytest.raises(configload.ConfigError) as e:
        configload.load(path)
    assert str(e.value).startswith(f"{path}: host.sokcet: unknown key")


def test_wrong_type_names_key_and_types(tmp_path: Path) -> None:
    path = write(tmp_path, "[mqueue]\nmax_messages = \"ten\"\n")
    with pytest.raises(configload.ConfigError) as e:
        configload.load(path)
    assert "mqueue.max_messages: expected an integer, got a string 'ten'" in str(e.value)


def test_dropin_overrides_and_errors_name_the_dropin(tmp_path: Path) -> None:
    main = write(tmp_path, "[worker]\nqueues = [\"a\"]\n[tasks.x]\nhandler = \"echo\"\n")
    (tmp_path / "tq.d").mkdir()
    write(tmp_path, "[worker]\nqueues = [\"b\"]\n[worker.3]\nqueues = [\"mail\"]\n", "tq.d/10-queues.toml")
    cfg = configload.load(main)
    assert cfg.worker_for("1").queues == ("b",)
    assert cfg.worker_for("3").queues == ("mail",)
    bad = write(tmp_path, "[tasks.x]\ntimeout = \"soon\"\n", "tq.d/20-bad.toml")
    with pytest.raises(configload.ConfigError) as e:
        configload.load(main)
    assert str(e.value).startswith(f"{bad}: tasks.x.timeout:")


def test_task_needs_exactly_one_handler(tmp_path: Path) -> None:
    path = write(tmp_path, "[tasks.x]\nhandler = \"echo\"\ncommand = [\"true\"]\n")
    with pytest.raises(configload.ConfigError, match="give one of handler, command or python"):
        configload.load(path)


def test_prefetch_is_bounded(tmp_path: Path) -> None:
    path = write(tmp_path, "[worker]\nprefetch = 0\n")
    with pytest.raises(configload.ConfigError, match=r"worker\.prefetch: must be between 1 and 1024"):
        configload.load(path)


@pytest.mark.parametrize(("pattern", "name", "expected"), [
    ("a.*", "a.b", True), ("a.*", "a.b.c", False), ("a.#", "a", True), ("a.#", "a.b.c", True),
    ("#", "task-1", True), ("*.b", "x.b", True), ("*.b", "b", False), ("#.z", "a.b.z", True), ("a", "b", False),
])
def test_topic_patterns(pattern: str, name: str, expected: bool) -> None:
    assert config.topic_matches(pattern, name) is expected


def test_exact_task_name_wins_over_pattern(tmp_path: Path) -> None:
    path = write(tmp_path, "[tasks.\"#\"]\nhandler = \"echo\"\n[tasks.\"mail.*\"]\nqueue = \"mail\"\n"
                           "[tasks.\"mail.send\"]\nqueue = \"urgent\"\n")
    cfg = configload.load(path)
    assert cfg.task_for("mail.send").queue == "urgent"  # type: ignore[union-attr]
    assert cfg.task_for("mail.bounce").queue == "default"  # type: ignore[union-attr]  # "#" comes first


@pytest.mark.parametrize(("text", "seconds"), [("30s", 30), ("250ms", 0.25), ("5m", 300), ("1h", 3600), (2, 2)])
def test_durations(text: object, seconds: float) -> None:
    assert configfiles.parse_duration(text) == seconds


def test_bad_duration() -> None:
    with pytest.raises(ValueError, match="not a duration"):
        configfiles.parse_duration("soon")
    with pytest.raises(ValueError, match="infinite"):
        configfiles.parse_duration(float("inf"))  # TOML has inf; a task timeout must be finite


@pytest.mark.parametrize("digit", ["\u0663", "\uff13"])  # Arabic-Indic and fullwidth 3: int() and float() take both
def test_durations_sizes_rates_and_ports_are_ascii_digits(tmp_path: Path, digit: str) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        configfiles.parse_duration(f"{digit}s")
    with pytest.raises(ValueError, match="not a size"):
        configfiles.parse_size(f"{digit}M")
    for toml, reason in ((f'[queues.a]\nrate = "{digit}/s"', "queues.a.rate: expected jobs per second"),
                         (f'[gateway]\nlisten = ":879{digit}"', "gateway.listen: expected host:port"),
                         (f'[host]\nlease = "{digit}0s"', "host.lease: "),
                         (f'[tasks.x]\ncommand = ["true"]\nmemory_max = "{digit}M"', "tasks.x.memory_max: ")):
        with pytest.raises(configload.ConfigError, match=re.escape(reason)):
            configload.load(write(tmp_path, toml))


def test_the_client_reads_only_host_socket_from_the_last_file_that_sets_it(tmp_path: Path) -> None:
    main = write(tmp_path, '[host]\nsocket = "/run/a.sock"\n[mqueue]\nmax_messages = "lots"\n')
    (tmp_path / "tq.d").mkdir()
    dropin = write(tmp_path, '[host]\nsocket = "/run/b.sock"\n', "tq.d/50-b.toml")
    setting = configfiles.socket_setting(main)
    assert (setting.path, setting.source) == ("/run/b.sock", f"host.socket in {dropin}")  # a bad key elsewhere is
    with pytest.raises(configload.ConfigError, match="max_messages"):                     # the daemons' business
        configload.load(main)
    write(tmp_path, "[host]\nsocket = 7\n", "tq.d/60-c.toml")
    with pytest.raises(configfiles.ConfigError, match=r"60-c.toml: host.socket: expected a path, got 7"):
        configfiles.socket_setting(main)


def test_the_client_leaves_out_a_file_that_does_not_parse_and_says_so(tmp_path: Path) -> None:
    main = write(tmp_path, '[host]\nsocket = "/run/a.sock"\n')
    (tmp_path / "tq.d").mkdir()
    bad = write(tmp_path, '[host\nsocket = "/run/b.sock"\n', "tq.d/70-d.toml")
    setting = configfiles.socket_setting(main)
    assert setting.path == "/run/a.sock" and [str(e) for e in setting.skipped] == [
        f"{bad}: TOML syntax error: line 1, column 6: Expected ']' at the end of a table declaration"]
    with pytest.raises(configfiles.ConfigError, match=r"70-d.toml: TOML syntax error: line 1"):
        configload.load(main)
    write(tmp_path, "socket =\n")  # the main file too: nothing left but the default
    setting = configfiles.socket_setting(main)
    assert (setting.path, setting.source, len(setting.skipped)) == (
        configfiles.DEFAULT_SOCKET, "the default: no file could be read", 2)
    with pytest.raises(configfiles.ConfigError, match="no such file"):  # a file named that is not there: refused
        configfiles.socket_setting(str(tmp_path / "nosuch.toml"))


def test_task_limits_and_kill_grace_are_read_and_carried_in_the_handler_spec(tmp_path: Path) -> None:
    cfg = configload.load(write(tmp_path, '[tasks.x]\ncommand = ["true"]\nmemory_max = "512M"\ncpu_max = "90s"\n'
                                      'open_files_max = 64\nkill_grace = "2s"\n'))
    assert cfg.task_for("x").handler_spec() == {  # type: ignore[union-attr]
        "handler": "command", "command": ["true"], "memory_max": 512 << 20, "cpu_max": 90, "open_files_max": 64,
        "kill_grace": 2.0}


@pytest.mark.parametrize(("text", "error"), [('memory_max = "lots"', "is not a size"), ("memory_max = 0", "above 0"),
                                             ('cpu_max = "0s"', "at least 1s"), ("open_files_max = 1", "between 3")])
def test_bad_task_limits_name_the_key(tmp_path: Path, text: str, error: str) -> None:
    with pytest.raises(configload.ConfigError, match=f"tasks.x.{text.split()[0]}: .*{error}"):
        configload.load(write(tmp_path, f'[tasks.x]\ncommand = ["true"]\n{text}\n'))


@pytest.mark.parametrize(("toml", "reason"), [
    ('[exchanges.x]\ntype = "topicc"\nbindings = [{ queue = "a", key = "b" }]', "type: must be one of fanout"),
    ('[exchanges.x]\ntype = "topic"', "bindings: expected at least one binding"),
    ('[exchanges.x]\ntype = "direct"\nbindings = [{ queue = "a" }]', "a direct exchange needs a key"),
    ('[exchanges.x]\nbindings = [{ queue = "a", key = "b" }]', "a fanout exchange sends to every queue"),
    ('[exchanges.x]\ntype = "topic"\nbindings = [{ queue = "a b", key = "c" }]', "invalid queue name 'a b'"),
    ('[exchanges.x]\ntype = "topic"\nbindings = [{ queue = "a", key = "c", q = 1 }]', "binding 1: expected"),
    ('[queues.a]\nrate = "ten/s"', 'rate: expected jobs per second, minute or hour, such as "10/s"'),
    ('[queues.a]\nrate = 0', "rate: must be more than 0"),
    ('[queues.a]\nconcurrency = 0', "concurrency: must be between 1 and"),
    ('[tasks.t]\nunique = "yes"', "unique: expected true or false"),
])
def test_workflow_keys_are_checked_with_the_file_the_key_and_the_reason(tmp_path: Path, toml: str,
                                                                        reason: str) -> None:
    path = tmp_path / "tq.toml"
    path.write_text(toml)
    with pytest.raises(configload.ConfigError, match=re.escape(reason)) as e:
        configload.load(str(path))
    assert str(e.value).startswith(str(path))


def test_rates_read_per_second_minute_or_hour(tmp_path: Path) -> None:
    path = tmp_path / "tq.toml"
    path.write_text('[queues.a]\nrate = "30/m"\n[queues.b]\nrate = 4\n[queues.c]\nrate = "7200/h"\n')
    cfg = configload.load(str(path))
    assert [cfg.queues[q].rate for q in "abc"] == [0.5, 4.0, 2.0]


def test_gateway_table_defaults_and_values(tmp_path: Path) -> None:
    assert configload.load(write(tmp_path, "")).gateway == config.GatewayConfig()
    cfg = configload.load(write(tmp_path, '[gateway]\nlisten = "[::1]:9000"\nmax_body = "1M"\nmax_wait = "1m"\n'
                                          'metrics_public = true\n'))
    assert (cfg.gateway.listen, cfg.gateway.max_body, cfg.gateway.max_wait) == ("[::1]:9000", 1 << 20, 60.0)
    assert cfg.gateway.metrics_public is True


@pytest.mark.parametrize(("text", "key"), [
    ('listen = "8790"', "gateway.listen"), ('listen = "host:99999"', "gateway.listen"),
    ('tls_cert = "/etc/cert.pem"', "gateway.tls_key"), ("max_connections = 0", "gateway.max_connections"),
    ('max_body = "lots"', "gateway.max_body"), ("colour = 1", "gateway.colour"),
    ('max_wait = "0"', "gateway.max_wait"), ('max_wait = "500ms"', "gateway.max_wait"),
])
def test_gateway_table_errors_name_the_key(tmp_path: Path, text: str, key: str) -> None:
    with pytest.raises(configload.ConfigError, match=re.escape(key)):
        configload.load(write(tmp_path, f"[gateway]\n{text}\n"))


@pytest.mark.parametrize("text, key", [
    ('[tasks.x]\nhandler = "echo"\nqueue = "mail\\n"\n', "tasks.x.queue"),
    ('[worker]\nqueues = ["default\\n"]\n', "worker.queues"),
    ('[queues."q\\n"]\nconcurrency = 1\n', "queues.q\n"),
    ('[worker."3\\n"]\nqueues = ["a"]\n', "worker.3\n"),
    ('[tasks.x]\nhandler = "echo"\n[schedules."s\\n"]\nevery = "1m"\ntask = "x"\n', "schedules.s\n:"),
    ('[schedules.s]\nevery = "1m"\ntask = "x"\nqueue = "q\\n"\n', "schedules.s.queue"),
    ('[exchanges."e\\n"]\nbindings = [{ queue = "a" }]\n', "exchanges.e\n"),
    ('[exchanges.e]\nbindings = [{ queue = "a\\n" }]\n', "exchanges.e.bindings"),
])
def test_a_name_ending_in_a_newline_is_refused(tmp_path: Path, text: str, key: str) -> None:
    with pytest.raises(configload.ConfigError) as e:
        configload.load(write(tmp_path, text))
    assert key in str(e.value), str(e.value)


def test_the_name_patterns_take_no_final_newline() -> None:
    from tq.transport.machines import MACHINE_RE, WORKER_NAME_RE
    for pattern, name in ((config.NAME_RE, "default"), (config.INSTANCE_RE, "3"), (MACHINE_RE, "box"),
                          (WORKER_NAME_RE, "3@box")):
        assert pattern.fullmatch(name) and not pattern.fullmatch(name + "\n"), pattern


@pytest.mark.parametrize("text, key", [
    ('[host]\nstate_dir = "relstate"\n', "host.state_dir"), ('[host]\nstate_dir = ""\n', "host.state_dir"),
    ('[host]\nsocket = "run/tq.sock"\n', "host.socket"),
    ('[gateway]\ntls_cert = "cert.pem"\ntls_key = "/k.pem"\n', "gateway.tls_cert"),
    ('[gateway]\ntls_cert = "/cert.pem"\ntls_key = "k.pem"\n', "gateway.tls_key"),
])
def test_a_relative_path_is_refused_naming_the_file_and_key(tmp_path: Path, text: str, key: str) -> None:
    main = write(tmp_path, "")
    (tmp_path / "tq.d").mkdir()
    dropin = write(tmp_path, text, "tq.d/80-rel.toml")
    with pytest.raises(configload.ConfigError) as e:
        configload.load(main)
    assert str(e.value).startswith(f"{dropin}: {key}: expected an absolute path"), str(e.value)


def test_the_client_refuses_a_relative_socket(tmp_path: Path) -> None:
    path = write(tmp_path, '[host]\nsocket = "tq.sock"\n')
    with pytest.raises(configload.ConfigError, match=f"^{re.escape(path)}: host.socket: expected an absolute path"):
        configfiles.socket_setting(path)


@pytest.mark.parametrize("text, key", [
    ('[tasks.x]\nhandler = "echo"\nbackoff = "10m"\nbackoff_max = "1s"\n', "tasks.x.backoff"),
    ('[tasks.x]\nhandler = "echo"\nbackoff_max = "500ms"\n', "tasks.x.backoff_max"),
])
def test_a_backoff_beyond_backoff_max_is_refused_naming_the_key(tmp_path: Path, text: str, key: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(configload.ConfigError, match=f"^{re.escape(path)}: {re.escape(key)}: backoff .* is more "
                                                     "than backoff_max"):
        configload.load(path)


def test_a_dangling_dropin_is_refused_and_left_out_by_the_client(tmp_path: Path) -> None:
    main = write(tmp_path, '[host]\nsocket = "/run/a.sock"\n')
    (tmp_path / "tq.d").mkdir()
    link = tmp_path / "tq.d" / "50-x.toml"
    link.symlink_to(tmp_path / "gone.toml")
    with pytest.raises(configload.ConfigError, match=f"^{re.escape(str(link))}: a symbolic link to .*gone.toml, "
                                                     "which does not exist"):
        configload.load(main)
    setting = configfiles.socket_setting(main)
    assert setting.path == "/run/a.sock" and [e.file for e in setting.skipped] == [str(link)]
