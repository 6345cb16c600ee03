"""The configuration's files: which ones, their TOML merged in order, and the socket path tqctl needs; its
durations, sizes and rates read and (a rate) shown back.

Kept apart from the schema (config.py's dataclasses) and its validation
(configload.py, every key checked), so that tqctl, which needs only
`host.socket`, starts fast. tq-host and the workers validate the whole
configuration at start and on reload; `tqctl config check` does the same.
"""

from __future__ import annotations

import glob
import math
import os
import re
import tomllib
from typing import Any, NamedTuple

from . import bounded

DEFAULT_CONFIG = "/etc/tq/tq.toml"
DEFAULT_SOCKET = "/run/tq/tq.sock"


class ConfigError(Exception):
    """A configuration problem: `file: key: reason`."""

    def __init__(self, file: str, key: str, reason: str) -> None:
        self.file, self.key, self.reason = file, key, reason
        where = f"{file}: {key}: " if key else f"{file}: "
        super().__init__(where + reason)


def parse_duration(value: object) -> float:
    """Seconds from a number or a string such as "250ms", "30s", "5m", "1h", "1d"."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as \"30s\"")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str):
        m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*(ms|s|m|h|d)?\s*", value)  # (\d: ٣ too; float() takes it)
        if not m:
            raise ValueError(f"{value!r} is not a duration (examples: \"500ms\", \"30s\", \"5m\", \"1h\")")
        unit = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2) or "s"]
        seconds = float(m.group(1)) * unit
    else:
        raise ValueError("expected a duration such as \"30s\"")
    if not 0 <= seconds < math.inf:
        raise ValueError("a duration cannot be negative or infinite")
    return seconds


def parse_size(value: object) -> int:
    """Bytes from a whole number or a string such as "512M", "2G", "64K" (powers of 1024)."""
    if isinstance(value, bool):
        raise ValueError("expected a size such as \"512M\"")
    if isinstance(value, int):
        size = value
    elif isinstance(value, str):
        m = re.fullmatch(r"\s*([0-9]+)\s*([KMGT]?)i?B?\s*", value, re.IGNORECASE)
        if not m:
            raise ValueError(f"{value!r} is not a size (examples: \"64M\", \"2G\", 1048576)")
        size = int(m.group(1)) * 1024 ** " KMGT".index(m.group(2).upper() or " ")
    else:
        raise ValueError("expected a size such as \"512M\"")
    if size <= 0:
        raise ValueError("a size must be above 0")
    return size


def rate_text(per_second: float) -> str:
    """A queue's rate in the unit of the configuration's forms (/s, /m, /h) that counts it in whole jobs, else
    in the first unit that counts at least one: 1/h, not 0.000277778/s."""
    counts = [(per_second * size, unit) for unit, size in (("s", 1), ("m", 60), ("h", 3600))]
    whole = [(n, unit) for n, unit in counts if n >= 1 and abs(n - round(n)) < 1e-6 * n]
    if whole:
        return f"{round(whole[0][0])}/{whole[0][1]}"
    n, unit = ([c for c in counts if c[0] >= 1] or counts[-1:])[0]
    return f"{n:.6g}/{unit}"


def config_files(path: str | None = None) -> list[str]:
    """The files to read: --config, else $TQ_CONFIG, else the default; then `<dir>/tq.d/*.toml`."""
    main = path or os.environ.get("TQ_CONFIG") or DEFAULT_CONFIG
    dropins = sorted(glob.glob(os.path.join(os.path.dirname(os.path.abspath(main)), "tq.d", "*.toml")))
    return [main, *dropins]


def read_files(path: str | None = None, default_required: bool = False,
               skipped: list[ConfigError] | None = None) -> tuple[dict[str, Any], dict[str, str], tuple[str, ...]]:
    """The files' tables merged in order, the file each dotted key came from, and the files read.

    A missing default file means defaults, for the daemons, unless `default_required` (`tqctl config check`:
    it must not call a file that is not there "ok"). Given `skipped`, a file that cannot be read or parsed is
    appended to it and left out, instead of raised: the client reads one key, and a broken drop-in that may
    not even set it must not stop every command (a missing file that was named is raised all the same).
    """
    files = config_files(path)
    merged: dict[str, Any] = {}
    origin: dict[str, str] = {}
    for i, file in enumerate(files):
        try:
            data = _read(file)
        except FileNotFoundError:
            if i > 0 and os.path.islink(file):  # a link to nothing: refused as a drop-in that does not parse
                e = ConfigError(file, "", f"a symbolic link to {os.readlink(file)}, which does not exist")
                if skipped is None:
                    raise e from None
                skipped.append(e)
                continue
            if i > 0:
                continue  # a drop-in removed since the glob
            if path is None and "TQ_CONFIG" not in os.environ:
                if not default_required:
                    continue  # no /etc/tq/tq.toml: defaults apply
                raise ConfigError(file, "", "no such file (name another with --config FILE or TQ_CONFIG=FILE)"
                                  ) from None
            raise ConfigError(file, "", "no such file") from None
        except ConfigError as e:
            if skipped is None:
                raise
            skipped.append(e)
            continue
        _merge(merged, data, origin, file, "")
    return merged, origin, tuple(files)


def _read(file: str) -> dict[str, Any]:
    """One file's TOML; FileNotFoundError, or ConfigError naming the file (and for a syntax error its line)."""
    try:
        text = bounded.read_regular(file).decode()
    except FileNotFoundError:
        raise
    except bounded.TooLarge as e:
        raise ConfigError(file, "", f"{e}, the most a configuration file may hold") from None
    except (OSError, UnicodeDecodeError, bounded.NotRegular) as e:
        raise ConfigError(file, "", getattr(e, "strerror", None) or str(e)) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(file, "", f"TOML syntax error: {_syntax_reason(e)}") from None


# keys naming a file that a daemon reads when it starts (not when the configuration is loaded): a missing or
# unreadable one passes load() and stops the daemon at its next start, so `tqctl config check` opens each
FILE_KEYS = ("amqp.password_file", "amqp.ca_file", "amqp.cert_file", "amqp.key_file", "transport.password_file",
             "transport.ca_file", "transport.cert_file", "transport.key_file", "gateway.tls_cert", "gateway.tls_key")


def unreadable_files(merged: dict[str, Any], origin: dict[str, str], files: tuple[str, ...]) -> list[ConfigError]:
    """The FILE_KEYS whose file does not exist or cannot be read by this process's user, each `file: key: reason`
    (the daemon's user must be able to read it too: configload.check asks serviceuser for tq-gateway's files)."""
    import stat

    problems = []
    for dotted in FILE_KEYS:
        section, key = dotted.split(".")
        table = merged.get(section)
        path = table.get(key) if isinstance(table, dict) else None
        if not isinstance(path, str) or not path:
            continue
        try:  # (non-blocking: a FIFO named by mistake must not hang the check)
            fd = os.open(os.path.join("/", path), os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            try:
                regular = stat.S_ISREG(os.fstat(fd).st_mode)
            finally:
                os.close(fd)
            reason = None if regular else f"{path} is not a regular file"
        except OSError as e:
            reason = f"cannot read {path}: {e.strerror or e}"
            if isinstance(e, PermissionError):
                import getpass

                reason += f" (as user {getpass.getuser()}, who runs this check)"
        if reason:
            problems.append(ConfigError(origin.get(dotted) or origin.get(section) or files[0], dotted, reason))
    return problems


class SocketSetting(NamedTuple):
    """Where the client reaches tq-host, where that path came from (for its messages), and the files it left out.
    (A NamedTuple: importing dataclasses costs every tqctl process about 10 ms at start.)"""

    path: str
    source: str  # "host.socket in FILE", or why the default applies
    skipped: tuple[ConfigError, ...] = ()


def socket_setting(path: str | None = None) -> SocketSetting:
    """`host.socket` from the configuration's files, checking only that key; files that do not parse are left
    out (each is in `skipped`: tqctl warns of it; `tqctl config check` and the daemons refuse it)."""
    skipped: list[ConfigError] = []
    merged, origin, files = read_files(path, skipped=skipped)
    host = merged.get("host", {})
    if not isinstance(host, dict):
        raise ConfigError(origin.get("host", files[0]), "host", "expected a table")
    value = host.get("socket", DEFAULT_SOCKET)
    if not isinstance(value, str) or not value.startswith("/"):  # (as the daemons' check, configreader.py)
        what = "an absolute path (starting with /)" if isinstance(value, str) else "a path"
        raise ConfigError(origin.get("host.socket", files[0]), "host.socket", f"expected {what}, got {value!r}")
    if "host.socket" in origin:
        source = f"host.socket in {origin['host.socket']}"
    elif not os.path.exists(files[0]):
        source = f"the default: {files[0]} does not exist"
    else:
        read = [f for f in files if f not in {e.file for e in skipped} and os.path.exists(f)]
        source = f"the default: no host.socket in {', '.join(read)}" if read else "the default: no file could be read"
    return SocketSetting(value, source, tuple(skipped))


def _syntax_reason(e: tomllib.TOMLDecodeError) -> str:
    m = re.match(r"(.*) \(at line (\d+), column (\d+)\)$", str(e))
    return f"line {m.group(2)}, column {m.group(3)}: {m.group(1)}" if m else str(e)


def _merge(into: dict[str, Any], data: dict[str, Any], origin: dict[str, str], file: str, prefix: str) -> None:
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value, origin, file, dotted + ".")
        else:
            into[key] = value
            _mark(origin, value, file, dotted)


def _mark(origin: dict[str, str], value: Any, file: str, dotted: str) -> None:
    origin[dotted] = file
    if isinstance(value, dict):
        for k, v in value.items():
            _mark(origin, v, file, f"{dotted}.{k}")
