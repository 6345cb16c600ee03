"""No class of the daemons has 30 or more instance attributes, its base classes' included.

CPython 3.11 (Debian bookworm's) keeps the attribute names of a class's instances in one shared key table of at
most 30 entries (SHARED_KEYS_MAX_SIZE). Past it, an instance's attributes live in a dict of its own, and its
method calls and attribute reads lose their specialised forms: every `self.part.method()` in the loop pays a
dictionary lookup. tq-worker went from 27 to 31 attributes with the AMQP transport, and counted about 0.7 %
more instructions per job for it (docs/performance.md); tq-host had 32 before anyone looked.
"""

from __future__ import annotations

import ast
import dis
import io
import sys
from pathlib import Path

import pytest

import tq

LIMIT = 30  # attributes at which the shared keys give out
DAEMONS = Path(tq.__file__).resolve().parent


def instance_attributes(root: Path) -> dict[str, set[str]]:
    """Each class under `root` (by name): the attributes its methods assign on self, its bases' (by name) too."""
    own: dict[str, tuple[set[str], list[str]]] = {}
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                names = {n.attr for fn in node.body if isinstance(fn, ast.FunctionDef) for n in ast.walk(fn)
                         if isinstance(n, ast.Attribute) and isinstance(n.ctx, ast.Store)
                         and isinstance(n.value, ast.Name) and n.value.id == "self"}
                bases = [b.id for b in node.bases if isinstance(b, ast.Name)]
                own[f"{path.relative_to(root)}:{node.name}"] = (names, bases)
    by_name = {key.split(":")[1]: value for key, value in own.items()}

    def total(name: str, depth: int = 0) -> set[str]:
        names, bases = by_name[name]
        out = set(names)
        for base in bases:
            if base in by_name and depth < 10:
                out |= total(base, depth + 1)
        return out

    return {key: total(key.split(":")[1]) for key in own}


def test_every_class_keeps_under_the_shared_keys_limit() -> None:
    counts = instance_attributes(DAEMONS)
    assert counts["host/__init__.py:Host"] and counts["worker/__init__.py:Worker"]  # the scan sees them
    over = {key: len(names) for key, names in counts.items() if len(names) >= LIMIT}
    assert not over, f"{over}: group some of the state into a part of its own (see this module's docstring)"


@pytest.mark.skipif(sys.version_info[:2] != (3, 11), reason="the specialised instruction names are 3.11's")
def test_the_limit_is_where_this_python_stops_specialising() -> None:
    def loads(attributes: int) -> list[str]:
        body = "\n".join(f"        self.a{i} = {i}" for i in range(attributes))
        namespace: dict[str, type] = {}
        exec(f"class C:\n    def __init__(self):\n{body}\n    def g(self):\n        return 1\n"
             "    def f(self):\n        return self.g() + self.a0\n", namespace)
        c = namespace["C"]()
        for _ in range(100):  # warmed up: the interpreter specialises after a few runs
            c.f()
        out = io.StringIO()
        dis.dis(namespace["C"].f, adaptive=True, file=out)  # type: ignore[call-arg]
        return [line.split()[1] for line in out.getvalue().splitlines() if "LOAD_ATTR" in line or "LOAD_METHOD" in line]

    assert loads(LIMIT - 1) == ["LOAD_METHOD_WITH_VALUES", "LOAD_ATTR_INSTANCE_VALUE"]
    assert loads(LIMIT) != loads(LIMIT - 1)
