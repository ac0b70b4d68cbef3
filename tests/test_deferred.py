"""The fixture clients' network transport is built at their first request that reaches the network.

A session that only replays never loads httpcore2 (test_hot_path.py); these tests hold the rest: the
client is the SDK's own default client, its transport the one that client would have built, built
once however many threads ask, and a guarded test whose client loads httpcore2 only once the seam
is in still has its reads cut where they are read.
"""

from __future__ import annotations

import concurrent.futures
import sys
import threading
import types
from typing import Any

import httpx2
import openai
import pytest

from pytest_llm_guard import clients
from pytest_llm_guard.deferred import DeferredAsyncTransport, DeferredTransport, deferring

OPTIONS = {"base_url": "http://127.0.0.1:9/v1", "api_key": "sk-test"}


def _pool_settings(client: httpx2.Client | httpx2.AsyncClient) -> dict[str, Any]:
    transport = client._transport
    transport = getattr(transport, "transport", transport)  # a deferred one is built here
    pool = transport._pool
    return {
        "type": type(transport).__name__,
        "limits": (pool._max_connections, pool._max_keepalive_connections, pool._keepalive_expiry),
        "http": (pool._http1, pool._http2),
        "context": pool._ssl_context,
        "timeout": client.timeout,
        "redirects": client.follow_redirects,
        "trust_env": client.trust_env,
        "mounts": sorted(pattern.pattern for pattern in client._mounts),
    }


@pytest.mark.parametrize("asynchronous", [False, True])
def test_a_fixture_clients_transport_is_the_one_the_sdks_default_client_builds(
    asynchronous: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")  # the environment's proxies are mounted as before
    monkeypatch.setenv("NO_PROXY", "localhost")
    client = clients.build("openai", asynchronous, OPTIONS, "options")
    mine = client._client
    assert isinstance(mine._transport, DeferredAsyncTransport if asynchronous else DeferredTransport)
    factory = openai.DefaultAsyncHttpx2Client if asynchronous else openai.DefaultHttpx2Client
    limits = {"limits": httpx2.Limits(max_connections=1000, max_keepalive_connections=0)} if asynchronous else {}
    context = _pool_settings(mine)["context"]
    sdks = factory(verify=context, **limits)
    assert _pool_settings(mine) == _pool_settings(sdks)
    assert _pool_settings(mine)["mounts"] == ["all://localhost", "https://"]


def test_without_the_sdks_defaults_helper_a_fixture_client_is_the_sdks_own_default_client(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "openai._httpx2", types.SimpleNamespace())  # an SDK release without it
    client = clients.build("openai", False, OPTIONS, "options")
    assert type(client._client._transport) is httpx2.HTTPTransport  # built at once, as the SDK builds it
    assert client._client.timeout == openai.DEFAULT_TIMEOUT and client._client.follow_redirects


def test_a_deferred_transport_is_built_once_for_requests_from_many_threads() -> None:
    built: list[httpx2.MockTransport] = []
    started = threading.Barrier(8)

    def build() -> httpx2.MockTransport:
        built.append(httpx2.MockTransport(lambda request: httpx2.Response(200, text="ok")))
        return built[-1]

    client = deferring(httpx2.Client)()
    client._transport = DeferredTransport(build)

    def get() -> str:
        started.wait()
        return client.get("http://127.0.0.1:9/").text

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        assert list(pool.map(lambda _: get(), range(8))) == ["ok"] * 8
    assert len(built) == 1


def test_a_client_closed_before_any_request_builds_no_transport() -> None:
    built: list[object] = []
    client = deferring(httpx2.Client)()
    transport = client._transport
    assert isinstance(transport, DeferredTransport)
    transport._build = lambda: built.append(1)  # type: ignore[method-assign]
    client.close()
    assert built == [] and client.is_closed


def test_a_given_transport_is_kept() -> None:
    mock = httpx2.MockTransport(lambda request: httpx2.Response(204))
    client = deferring(httpx2.Client)(transport=mock)
    assert client._transport is mock
    assert client.get("http://127.0.0.1:9/").status_code == 204


def test_a_client_built_in_a_guarded_test_after_the_seam_went_in_has_its_reads_cut(
    pytester: pytest.Pytester,
) -> None:
    """The seam went in before anything loaded httpcore2 (the guarded test's own fixture clients build
    their transport at their first request): the first request of a client that loads it wraps its
    reads, so headers trickling into a worker thread, where no alarm reaches and no read timeout
    fires, are still cut at the attempt's cap (unwrapped, they would take some 8 s)."""
    pytester.makepyfile(
        """
        import concurrent.futures
        import sys

        import openai
        import pytest

        from pytest_llm_guard import LLMBudgetExceeded
        from pytest_llm_guard.fault import Fault


        @pytest.mark.llm_budget(call_timeout=0.3, retries=0)
        def test_cut(llm_fault_server, llm_guard):
            assert "httpcore2" not in sys.modules, "the premise: nothing has loaded httpcore2 yet"
            llm_fault_server.plan(Fault.trickle(interval=0.05, chunk_size=1, headers=True))
            client = openai.OpenAI(base_url=llm_fault_server.url + "/v1", api_key="sk-test", max_retries=0)
            ask = lambda: client.chat.completions.create(
                model="m", messages=[{"role": "user", "content": "hi"}], timeout=60
            )
            with concurrent.futures.ThreadPoolExecutor(1) as pool, pytest.raises(LLMBudgetExceeded) as info:
                pool.submit(ask).result(timeout=10)
            assert info.value.budget == "call_timeout"
            (cut,) = llm_guard.events  # cut where it was read, not by the alarm in the main thread
            assert (cut.cause, cut.outcome, cut.status) == ("call_timeout", "ReadTimeout", None)
            assert cut.duration < 3.0
            client.close()
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:recording", "--llm-record=off")
    result.assert_outcomes(passed=1)


def test_an_anthropic_fixture_client_keeps_its_sdks_own_default_client() -> None:
    """anthropic's default client class builds its transport itself (TCP keep-alive options and all):
    it is used as it is, its transport built at once."""
    anthropic = pytest.importorskip("anthropic")
    client = clients.build("anthropic", False, {"base_url": "http://127.0.0.1:9", "api_key": "sk-test"}, "options")
    assert type(client._client) is anthropic.DefaultHttpxClient
    assert type(client._client._transport) is httpx2.HTTPTransport
