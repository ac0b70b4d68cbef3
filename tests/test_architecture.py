"""The package's shape, checked: imports flow one way, API knowledge sits in the dialect, nothing heavy loads early."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

import pytest_llm_guard

pytest_plugins = ["pytester"]

PACKAGE = Path(pytest_llm_guard.__file__).parent


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_at_load(path: Path) -> set[str]:
    """The package modules ``path`` imports when it loads: not under TYPE_CHECKING, not inside functions."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    tree = ast.parse(path.read_text())
    for node in tree.body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
            target = f"{base}.{node.module}" if node.module else base
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            found.update(n for n in names if n.startswith("pytest_llm_guard"))
    return found


def test_no_import_cycle_in_the_package() -> None:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {name: {m for m in imports_at_load(path) if m in modules and m != name} for name, path in modules.items()}
    # A package's __init__ re-exporting its submodules is not a cycle; a submodule importing back is.
    for name, edges in graph.items():
        graph[name] = {m for m in edges if not m.startswith(name + ".")}

    def visit(node: str, trail: list[str]) -> None:
        if node in trail:
            raise AssertionError("import cycle: " + " -> ".join([*trail[trail.index(node) :], node]))
        for target in sorted(graph[node]):
            visit(target, [*trail, node])

    for name in sorted(graph):
        visit(name, [])


@pytest.mark.parametrize("word", ["x-stainless", "chat/completions", "/openai/deployments", "[DONE]", "total_tokens"])
def test_api_knowledge_lives_in_the_dialect(word: str) -> None:
    """Adding an API dialect touches dialect.py and the fault server's answers, nothing else."""
    outside = [
        str(p.relative_to(PACKAGE))
        for p in PACKAGE.rglob("*.py")
        if p.name != "dialect.py" and p.parent.name != "fault" and word in p.read_text()
    ]
    assert outside == []


def test_a_suite_that_never_uses_the_plugin_loads_nothing_heavy(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(
        """
        import sys

        def pytest_sessionfinish(session):
            heavy = [m for m in ("openai", "vcr", "tenacity", "httpx2", "yaml") if m in sys.modules]
            (session.config.rootpath / "loaded.txt").write_text(" ".join(heavy))
        """
    )
    pytester.makepyfile("def test_one():\n    assert True\n\ndef test_two():\n    assert True\n")
    result = pytester.runpytest_subprocess("-p", "no:anyio")
    result.assert_outcomes(passed=2)
    assert (pytester.path / "loaded.txt").read_text() == ""
    assert "pytest_llm_guard.plugin" in sys.modules  # the plugin itself is installed and loaded here


TIME_READS = {("time", name) for name in ("monotonic", "time", "perf_counter", "sleep")} | {("asyncio", "sleep")}
REAL_TIME_ALLOWED = {"pytest_llm_guard.clock", "pytest_llm_guard.fault"}
"""The clock itself, and the fault server, whose hangs and trickles are real by nature."""


def test_every_time_read_and_wait_goes_through_the_clock() -> None:
    found = []
    for path in PACKAGE.rglob("*.py"):
        name = module_name(path)
        if any(name == allowed or name.startswith(allowed + ".") for allowed in REAL_TIME_ALLOWED):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module in ("time", "asyncio"):
                found += [
                    f"{name}: from {node.module} import {a.name}"
                    for a in node.names
                    if (node.module, a.name) in TIME_READS
                ]
            elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
                if (node.value.id, node.attr) in TIME_READS:
                    found.append(f"{name}:{node.lineno}: {node.value.id}.{node.attr}")
    assert not found, "read the time and wait through the test's Clock (clock.py): " + ", ".join(found)
