"""The man pages that debian/rules writes with packaging/manpages.py, and the configuration reference that
tq.toml(5) is made of, held to the keys configload.py accepts."""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import shutil
import subprocess
from pathlib import Path
from types import ModuleType

import pytest

from tq import configload, ctl

ROOT = Path(__file__).resolve().parents[2]


def load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("manpages", ROOT / "packaging/manpages.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


manpages = load_generator()
README = (ROOT / "README.md").read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def pages(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    out = tmp_path_factory.mktemp("man")
    assert manpages.main([str(out)]) == 0
    return {p.name: p.read_text() for p in out.iterdir()}


def accepted_keys(tmp_path: Path) -> set[str]:
    """Every key configload.py accepts, as `section.key` (`tasks.*.timeout`), from the `known keys` it lists when
    a file names an unknown one."""
    def known(toml: str) -> list[str]:
        path = tmp_path / "tq.toml"
        path.write_text(toml + "\nzz_unknown = 1\n")
        with pytest.raises(configload.ConfigError) as e:
            configload.load(str(path))
        match = re.search(r"unknown key \(known keys: ([^)]*)\)", str(e.value))
        return match.group(1).split(", ") if match else []

    keys = set()
    for section in known(""):
        plain = known(f"[{section}]")
        named = plain or known(f"[{section}.x]")
        assert named, f"configload.py: [{section}] lists no known keys for an unknown one"
        keys |= {f"{section}{'' if plain else '.*'}.{key}" for key in named}
    return keys


def test_the_configuration_reference_names_exactly_the_keys_config_accepts(tmp_path: Path) -> None:
    documented, accepted = manpages.readme_keys(README), accepted_keys(tmp_path)
    assert not accepted - documented, "keys configload.py accepts that README.md's Configuration table (and so " \
                                      f"tq.toml(5)) does not describe: {sorted(accepted - documented)}"
    assert not documented - accepted, f"README.md describes keys configload.py refuses: {sorted(documented - accepted)}"


def test_every_page_is_written_with_its_section_and_a_whatis_line(pages: dict[str, str]) -> None:
    assert sorted(pages) == ["tq-gateway.8", "tq-host.8", "tq-worker.8", "tq.toml.5", "tqctl.1"]
    for name, text in pages.items():
        title, section = name.rsplit(".", 1)
        assert re.search(rf"^\.TH {re.escape(title.upper())} {section} \d{{4}}-\d\d-\d\d ", text, re.M), name
        assert re.search(rf"^\.SH NAME\n{re.escape(manpages.escape(title))} \\- \S", text, re.M), name


def test_tqctl_page_has_every_command_and_option_that_help_shows_and_no_hidden_one(pages: dict[str, str]) -> None:
    text = pages["tqctl.1"]
    parser = ctl.build_parser()
    commands = {name: sub for name, _, sub in manpages.subcommands(parser)}
    assert {"submit", "status", "list", "config"} <= set(commands)
    for name, sub in commands.items():
        assert f'.SS "{manpages.escape(name)}"' in text
        for action in sub._actions:
            if action.help != argparse.SUPPRESS:
                for option in action.option_strings:
                    assert manpages.bold(option) in text, (name, option)
    assert "_complete" not in text and "==SUPPRESS==" not in text
    assert '.SS "token create"' in text and manpages.bold("--read-only") in text  # a command's own commands
    assert re.search(r"^\.SH EXIT STATUS\n\.TP\n\\fB0\\fR\nok$", text, re.M)
    assert re.search(r"^\.TP\n\\fB130\\fR\ninterrupted \(Ctrl\\-C\)$", text, re.M)  # tqctl exits 130 on Ctrl-C


def test_daemon_pages_name_the_drop_ins_among_their_files(pages: dict[str, str]) -> None:
    for page in ("tq-host.8", "tq-worker.8"):
        files = pages[page].split(".SH FILES\n")[1].split(".SH ")[0]
        assert manpages.bold("/etc/tq/tq.toml") in files and manpages.bold("/etc/tq/tq.d/*.toml") in files, page


def test_daemon_pages_describe_their_arguments(pages: dict[str, str]) -> None:
    assert "\\fB\\-\\-config\\fR" in pages["tq-host.8"]
    assert "worker instance name" in pages["tq-worker.8"]


def test_gateway_page_has_its_options_and_every_section_and_route_of_docs_gateway_md(pages: dict[str, str]) -> None:
    text = pages["tq-gateway.8"]
    assert "\\fB\\-\\-config\\fR" in text
    doc = (ROOT / "docs/gateway.md").read_text(encoding="utf-8")
    titles = re.findall(r"^## (.+)$", doc, re.M)
    assert titles
    for title in titles:
        assert f".SH {manpages.heading(title)}\n" in text, title
    routes = [row[0] for block in manpages.blocks(doc) if manpages.is_table(block)
              for row in manpages.table_rows(block)]
    assert any("POST /api/v1/jobs" in route for route in routes)
    for route in routes:
        assert f".TP\n{manpages.inline(route)}\n" in text, route
    for section in ("SYNOPSIS", "OPTIONS", "SIGNALS", "EXIT STATUS", "FILES", "SEE ALSO"):
        assert f".SH {section}\n" in text, section
    assert "\\fBgateway.listen\\fR" in text  # SIGHUP: the keys that wait for a restart, from the code


def test_a_blank_line_inside_a_code_block_does_not_split_it() -> None:
    assert manpages.blocks("text\n\n```toml\n[a]\nx = 1\n\n[b]\n```\n\nmore\n") == [
        ["text"], ["```toml", "[a]", "x = 1", "", "[b]", "```"], ["more"]]


@pytest.mark.skipif(shutil.which("man") is None, reason="man-db not installed (lintian runs this check too)")
def test_man_reads_every_page_without_a_warning(tmp_path: Path, pages: dict[str, str]) -> None:
    for name, text in pages.items():
        (tmp_path / name).write_text(text)
        # what lintian's manpage-has-errors-from-man runs
        result = subprocess.run(["man", "--warnings", "-E", "UTF-8", "-l", "-Tutf8", "-Z", str(tmp_path / name)],
                                capture_output=True, text=True,
                                env={**os.environ, "LC_ALL": "C.UTF-8", "MANWIDTH": "80", "MANROFFSEQ": ""})
        assert (result.returncode, result.stderr) == (0, ""), name
