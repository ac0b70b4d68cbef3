"""The package's shape, checked: imports flow one way, API knowledge sits in the dialect, nothing heavy loads early."""

from __future__ import annotations

import ast
import json
import sys
import types
from pathlib import Path
from typing import Any

import pytest

import pytest_llm_guard

pytest_plugins = ["pytester"]

PACKAGE = Path(pytest_llm_guard.__file__).parent


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """The package modules ``path`` imports at its top level, those under ``TYPE_CHECKING`` included:
    a type-only import still says the module knows of the other, and calls back into it unseen."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    tree = ast.parse(path.read_text())
    nodes = []
    for node in tree.body:
        is_type_checking = isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        nodes += node.body if is_type_checking else [node]  # type: ignore[attr-defined]
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
            target = f"{base}.{node.module}" if node.module else base
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            found.update(n for n in names if n.startswith("pytest_llm_guard"))
    return found


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` (its trail, first node repeated at the end), or None."""

    def visit(node: str, trail: list[str]) -> list[str] | None:
        if node in trail:
            return [*trail[trail.index(node) :], node]
        for target in sorted(graph.get(node, ())):
            cycle = visit(target, [*trail, node])
            if cycle is not None:
                return cycle
        return None

    return next((c for c in (visit(name, []) for name in sorted(graph)) if c is not None), None)


def test_no_import_cycle_in_the_package() -> None:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {name: {m for m in imports_of(path) if m in modules and m != name} for name, path in modules.items()}
    # A package's __init__ re-exporting its submodules is not a cycle; a submodule importing back is.
    for name, edges in graph.items():
        graph[name] = {m for m in edges if not m.startswith(name + ".")}
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


PIPELINE_ORDER = ("retry", "transport", "pipeline", "cassettes", "routing")
"""The stages in the order a request meets them (``pipeline.py``): a call goes only down this list."""


def test_a_guarded_call_never_calls_back_up_the_pipeline(primary, backup, tmp_path: Path) -> None:
    """Run time, every stage on the path: a guarded client's call, recorded into a cassette, meets
    a 429 and a 503 at the primary endpoint and fails over to the backup. Calls are recorded as
    caller module -> callee module within the package. A function a stage hands down (a ``send``
    continuation, a closure such as the attempt context's ``cap``) is the caller's own and is not
    an edge back; any other call into a module that called this one is."""
    import openai

    from pytest_llm_guard import FakeClock, pipeline, transport
    from pytest_llm_guard.cassettes import open_cassette
    from pytest_llm_guard.config import Settings
    from pytest_llm_guard.endpoints import Endpoint, EndpointSet
    from pytest_llm_guard.fault import Fault
    from pytest_llm_guard.guard import Guard
    from pytest_llm_guard.routing import Router, RouterLayer
    from pytest_llm_guard.state import MemoryStore

    primary.plan(Fault.status(429, retry_after=0), Fault.status(503))
    clock = FakeClock()
    endpoints = EndpointSet(
        (Endpoint("primary", primary.base_url, priority=0), Endpoint("backup", backup.base_url, priority=1)),
        configured=True,
        source="the test",
    )
    settings = Settings(backoff_initial=0.01, backoff_max=0.05, deadline=10.0)
    guard = Guard(settings, test_id="test_architecture::call", clock=clock)
    cassette = open_cassette(
        tmp_path / "call.yaml",
        settings,
        mode="new_episodes",
        nodeid=guard.test_id,
        matcher=lambda request, recorded: None,
        scrubber=guard.scrubber,
        clock=clock,
    )
    router = Router(endpoints, MemoryStore(), Settings(breaker_failures=1), clock=clock)
    guard.pipeline = pipeline.build(cassette=cassette, routing=RouterLayer(router, settings))
    client = openai.OpenAI(base_url=primary.base_url, api_key="sk-test")
    edges: set[tuple[str, str]] = set()

    def record(frame: types.FrameType, event: str, arg: object) -> None:
        if event != "call" or frame.f_back is None:
            return
        callee, caller = frame.f_globals.get("__name__", ""), frame.f_back.f_globals.get("__name__", "")
        handed_down = "<locals>" in frame.f_code.co_qualname or frame.f_code.co_name == "<lambda>"
        ours = all(
            m.startswith("pytest_llm_guard.") and not m.startswith("pytest_llm_guard.fault") for m in (callee, caller)
        )
        if ours and callee != caller and not handed_down:
            edges.add((caller, callee))

    transport.activate(guard)
    sys.setprofile(record)
    try:
        answer = guard.fixture_client(client).chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
        )
    finally:
        sys.setprofile(None)
        transport.deactivate(guard)
        client.close()
    assert answer.choices
    assert [(a.endpoint_name, a.source) for a in guard.events] == [
        ("primary", "live"),
        ("backup", "recorded"),
    ], "the path under test: a 429 at the primary, a failover recorded at the backup"
    graph: dict[str, set[str]] = {}
    for caller, callee in edges:  # a package is one stage: a dialect's base class calls its own subclass
        caller, callee = (".".join(m.split(".")[:2]) for m in (caller, callee))
        if caller != callee:
            graph.setdefault(caller, set()).add(callee)
    stages = {f"pytest_llm_guard.{name}" for name in PIPELINE_ORDER}
    assert stages <= set(graph) | {"pytest_llm_guard.routing"}, "every stage was seen calling on"
    assert "pytest_llm_guard.routing" in {b for targets in graph.values() for b in targets}
    cycle = find_cycle(graph)
    assert cycle is None, "a call back up the pipeline: " + " -> ".join(cycle or [])
    stage = {f"pytest_llm_guard.{name}": n for n, name in enumerate(PIPELINE_ORDER)}
    backwards = [(a, b) for a in graph for b in graph[a] if a in stage and b in stage and stage[b] < stage[a]]
    assert backwards == [], "a stage called one before it in the pipeline's order"
    for stage_name in ("retry", "cassettes", "routing", "pipeline"):
        assert "pytest_llm_guard.guard" not in graph.get(f"pytest_llm_guard.{stage_name}", ()), (
            f"{stage_name} called the guard: a stage gets an attempt context, never the guard"
        )


# Words only one API (or its SDK) uses, and the modules that may say them: the dialect's own module,
# the fault server (which speaks every API) and the client fixtures (which build each SDK's clients).
DIALECT_WORDS = {
    "dialects/openai.py": [
        "chat/completions",
        "OPENAI_",
        "AzureOpenAI",
        "/openai/deployments",
        "[DONE]",
        "total_tokens",
        "OpenAIError",
        "response.completed",
    ],
    "dialects/anthropic.py": [
        "/v1/messages",
        "message_start",
        "message_delta",
        "message_stop",
        "anthropic-version",
        "ANTHROPIC_",
        "overloaded_error",
        "AnthropicError",
        "input_json_delta",
    ],
    # Both SDKs are generated by Stainless: what they share lives in one module the two dialects derive from.
    "dialects/stainless.py": ["x-stainless", "_base_client", "retry-after-ms", "x-should-retry"],
}
SHARED = ("fault/", "fixtures.py")
DEFAULT_NAMES = {"dialects/openai.py": "default_dialect.py"}
"""The default kind's model and base-URL variable, read by configuration without loading its dialect."""


@pytest.mark.parametrize(
    ("home", "word"), [(home, word) for home, words in DIALECT_WORDS.items() for word in words], ids=str
)
def test_api_knowledge_lives_in_its_dialect(home: str, word: str) -> None:
    """Adding an API dialect touches its module in dialects/, the fault server's answers and the fixtures."""
    allowed = {home, *(("dialects/openai.py", "dialects/anthropic.py") if home == "dialects/stainless.py" else ())}
    allowed |= {DEFAULT_NAMES[home]} if home in DEFAULT_NAMES and word == "OPENAI_" else set()
    outside = [
        name
        for p in PACKAGE.rglob("*.py")
        if (name := p.relative_to(PACKAGE).as_posix()) not in allowed
        and not name.startswith(SHARED)
        and word in p.read_text()
    ]
    assert outside == []


def test_a_suite_that_never_uses_the_plugin_loads_nothing_heavy_and_runs_no_hook_per_test(
    pytester: pytest.Pytester,
) -> None:
    """Installed and unused, the plugin loads no SDK, opens no session and none of its code runs per test:
    every hook call into its modules is counted (pluggy's monitoring), and none is a test's."""
    pytester.makeconftest(
        """
        import json
        import sys

        per_test = []

        def _module(plugin):
            return getattr(plugin, "__name__", None) or type(plugin).__module__

        def pytest_configure(config):
            def before(hook_name, hook_impls, kwargs):
                if hook_name.startswith("pytest_runtest") or "item" in kwargs:
                    per_test.extend(
                        f"{hook_name} ({impl.plugin_name})" for impl in hook_impls
                        if _module(impl.plugin).startswith("pytest_llm_guard")
                    )

            config.pluginmanager.add_hookcall_monitoring(before, lambda *args: None)

        def pytest_sessionfinish(session):
            found = {
                "heavy": [m for m in ("openai", "vcr", "tenacity", "httpx2", "yaml") if m in sys.modules],
                "modules": sorted(m for m in sys.modules if m.startswith("pytest_llm_guard")),
                "registered": sorted(
                    name for name, _ in session.config.pluginmanager.list_name_plugin() if name.startswith("llm_guard")
                ),
                "per_test": per_test,
                "toml": "tomllib" in sys.modules or "tomli" in sys.modules,
            }
            (session.config.rootpath / "found.json").write_text(json.dumps(found))
        """
    )
    pytester.makepyfile("def test_one():\n    assert True\n\ndef test_two():\n    assert True\n")
    result = pytester.runpytest_subprocess("-p", "no:anyio", "-p", "no:xdist")
    result.assert_outcomes(passed=2)
    found = json.loads((pytester.path / "found.json").read_text())
    assert found["heavy"] == []
    assert found["per_test"] == []
    assert found["registered"] == ["llm_guard", "llm_guard_listing_starts_no_workers"]
    # what the start-up loads: options, settings, fixtures' definitions; no session, endpoint, guard, report
    # or dialect (configuration reads the default model from default_dialect), nor the TOML parser
    loaded = {m.removeprefix("pytest_llm_guard.") for m in found["modules"]}
    assert not loaded & {"session", "state", "endpoints", "prices", "learned", "protocol", "alarm", "report", "clock"}
    # nor what only a configured or guarded session runs: markers applied, clients built, the summary's sections
    assert not loaded & {"markers", "clients", "summary", "audit", "listing", "backoff"}
    assert not {m for m in loaded if m == "dialects" or m.startswith("dialects.")}
    assert found["toml"] is False
    assert "pytest_llm_guard.plugin" in sys.modules  # the plugin itself is installed and loaded here


def test_a_healthy_guarded_session_loads_only_what_its_settings_use(
    pytester: pytest.Pytester, server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A guarded test whose one call succeeds, with records off, one endpoint and no report, limit or
    learned timeouts asked for: the retry policy (tenacity), learned limits, shared rate limits, cassettes,
    the reports' writers and the other start-up-free parts are never imported, through to the terminal summary; the
    scrubber compiles none of its patterns (no text was scrubbed)."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-a-real-key")
    pytester.makeconftest(
        """
        import json
        import sys

        def pytest_unconfigure(config):
            found = sorted(m for m in sys.modules if m.startswith("pytest_llm_guard") or m in WATCHED)
            compiled = sys.modules["pytest_llm_guard.scrub"]._compiled.cache_info().currsize
            (config.rootpath / "found.json").write_text(json.dumps({"modules": found, "compiled": compiled}))

        WATCHED = {"tenacity", "gzip", "vcr", "yaml"}
        """
    )
    pytester.makepyprojecttoml(f'[tool.pytest_llm_guard]\nbase_url = "{server.base_url}"\nrecord = "off"\n')
    pytester.makepyfile(
        """
        def test_one(llm_client):
            reply = llm_client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
            assert reply.choices[0].message.content
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:anyio", "-p", "no:xdist", "-p", "no:recording")
    result.assert_outcomes(passed=1)
    found = json.loads((pytester.path / "found.json").read_text())
    loaded = {m.removeprefix("pytest_llm_guard.") for m in found["modules"]}
    assert {"guard", "transport", "summary", "report_json"} <= loaded, "the guarded path and its summary ran"
    unused = {"tenacity", "gzip", "vcr", "yaml", "backoff", "learned", "cassettes", "audit", "listing", "state_redis"}
    unused |= {"ratelimit"}
    assert loaded & unused == set()
    assert found["compiled"] == 0


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
