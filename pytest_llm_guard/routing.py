"""Failover routing and endpoint breakers, as a guard layer at the transport seam.

What a test sees: one discovery of a dead endpoint, shared by the whole session
(and every xdist worker, through the state store); after it, failover in
milliseconds, or a fast fail/skip whose reason names the endpoint, its breaker
state, its last errors and when the next probe is due.

- Requests of the ``llm_client`` fixtures carry :data:`~endpoints.ROUTE_HEADER`. With
  endpoints configured they are *routed*: each attempt goes to the first available
  endpoint serving the model (priority, then weight), endpoints this call has not
  tried first, at most ``max_endpoints`` of them per call. When the next attempt will
  go elsewhere, the failed attempt is marked (``failover_to``) and the retry policy
  skips the backoff meant for the failed endpoint.
- Requests of any other client (code under test) to a known endpoint are not moved;
  when the endpoint is not available they fail at once with
  :class:`~errors.LLMEndpointUnavailable`, which the SDK raises as ``APIConnectionError``.
- Every attempt's outcome feeds the endpoint's breaker, rate-limit cooldown and
  retry tokens (``breaker.py``). Requests to other URLs pass untouched.

Breakers see an attempt's status and transport errors, i.e. whether the endpoint
answered; a body cut while streaming is the guard's business (deadline, call cap),
not the breaker's.
"""

from __future__ import annotations

__tracebackhide__ = True  # pytest: a failed test shows where the LLM call was made, not our internals

import asyncio
import logging
import math
import os
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx2

from . import wire
from .breaker import BreakerPolicy, EndpointHealth, Outcome, Verdict, classify, describe_error
from .config import OPTIONS, Settings
from .endpoints import ROUTE_HEADER, Endpoint, EndpointSet, forward
from .errors import LLMEndpointUnavailable, LLMGuardConfigError, LLMNoEndpoint
from .events import AttemptEvent
from .retry import FAILOVER_TO, parse_retry_after
from .state import StateStore
from .transport import AsyncSend, Send

if TYPE_CHECKING:
    from .guard import Guard

log = logging.getLogger("pytest_llm_guard")

BREAKER_MARKER = "llm_breaker"
TRIED = "llm_guard_tried"
"""Request extension: the endpoints this call's attempts went to, in order."""
_LEASE_MARGIN = 1.0
"""Seconds a half-open probe is held beyond its attempt's cap before another caller may probe."""


def breaker_policy(settings: Settings) -> BreakerPolicy:
    try:
        return BreakerPolicy(
            failures=settings.breaker_failures,
            failure_rate=settings.breaker_failure_rate,
            window=settings.breaker_window,
            min_calls=settings.breaker_min_calls,
            cooldown=settings.breaker_cooldown,
            cooldown_max=settings.breaker_cooldown_max,
            retry_tokens=settings.retry_tokens,
            token_ratio=settings.retry_token_ratio,
        )
    except ValueError as exc:
        raise LLMGuardConfigError(f"pytest-llm-guard: {exc}") from None


@dataclass(frozen=True)
class TestPolicy:
    """From ``@pytest.mark.llm_breaker``: which endpoints a test may use, what happens when none can answer."""

    __test__ = False  # not a test class, whatever pytest thinks of the name

    endpoints: tuple[str, ...] | None = None
    on_open: str = OPTIONS["on_open"].default
    on_open_source: str = "default"


def test_policy(markers: Iterable[Any], settings: Settings, endpoints: EndpointSet, where: str) -> TestPolicy:
    """Merge ``llm_breaker`` markers given closest first; unknown keys or endpoint names are errors."""
    policy = TestPolicy(on_open=settings.on_open, on_open_source=settings.source_of("on_open"))
    for marker in reversed(list(markers)):
        source = f"@pytest.mark.{BREAKER_MARKER} on {where}"
        unknown = set(marker.kwargs) - {"endpoints", "on_open"}
        if marker.args or unknown:
            raise LLMGuardConfigError(
                f"pytest-llm-guard: {source} takes endpoints=[names] and on_open='fail'|'skip' only, "
                f"got args={marker.args!r} kwargs={marker.kwargs!r}"
            )
        if "endpoints" in marker.kwargs:
            names = marker.kwargs["endpoints"]
            if isinstance(names, str) or not isinstance(names, (list, tuple)) or not names:
                raise LLMGuardConfigError(f"pytest-llm-guard: {source}: endpoints must be a non-empty list of names")
            policy = TestPolicy(endpoints.check_names(names, source), policy.on_open, policy.on_open_source)
        if "on_open" in marker.kwargs:
            on_open = settings.merged({"on_open": marker.kwargs["on_open"]}, source).on_open
            policy = TestPolicy(policy.endpoints, on_open, source)
    return policy


class Router:
    """The session's view of its endpoints: their order and their shared health (``state.py``)."""

    def __init__(
        self,
        endpoints: EndpointSet,
        store: StateStore,
        policy: BreakerPolicy,
        *,
        max_endpoints: int = OPTIONS["max_endpoints"].default,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        environ: Mapping[str, str] = os.environ,
    ) -> None:
        self.endpoints = endpoints
        self.store = store
        self.policy = policy
        self.max_endpoints = max_endpoints
        self.clock = clock
        self.rng = rng or random.Random()
        self.environ = environ

    @staticmethod
    def _key(endpoint: Endpoint) -> str:
        return f"endpoint:{endpoint.name}"

    def candidates(self, model: str | None, allowed: tuple[str, ...] | None) -> list[Endpoint]:
        """Endpoints serving ``model``: by priority, equal priorities in a weighted random order."""
        pool = [e for e in self.endpoints.endpoints if e.serves(model) and (allowed is None or e.name in allowed)]
        keys = {e.name: (e.priority, -(self.rng.random() ** (1 / e.weight))) for e in pool}
        return sorted(pool, key=lambda e: keys[e.name])

    def _missing_key(self, endpoint: Endpoint) -> Verdict | None:
        if endpoint.api_key_env and endpoint.api_key(self.environ) is None:
            return Verdict(False, f"its api_key_env {endpoint.api_key_env} is not set in the environment")
        return None

    def admit(self, endpoint: Endpoint, model: str, *, retry: bool, lease: float, max_wait: float = 0.0) -> Verdict:
        """May an attempt go there now? Takes the half-open probe when it is free."""
        missing = self._missing_key(endpoint)
        if missing is not None:
            return missing

        def change(record: dict[str, Any]) -> Verdict:
            health = EndpointHealth.load(record)
            verdict = health.admit(model, self.clock(), self.policy, retry=retry, lease=lease, max_wait=max_wait)
            health.dump(record)
            return verdict

        return self.store.update(self._key(endpoint), change)

    def peek(self, endpoint: Endpoint, model: str, *, retry: bool) -> Verdict:
        """:meth:`admit` without taking the probe: where would a retry go?"""
        missing = self._missing_key(endpoint)
        if missing is not None:
            return missing
        health = EndpointHealth.load(self.store.get(self._key(endpoint)))
        return health.peek(model, self.clock(), self.policy, retry=retry)

    def record(
        self,
        endpoint: Endpoint,
        model: str,
        outcome: Outcome,
        *,
        error: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        def change(record: dict[str, Any]) -> None:
            health = EndpointHealth.load(record)
            health.record(model, outcome, self.clock(), self.policy, error=error, retry_after=retry_after)
            health.dump(record)

        self.store.update(self._key(endpoint), change)

    def status(self) -> list[str]:
        """One line per breaker that tripped or endpoint that was rate-limited this session."""
        lines = []
        now = self.clock()
        for endpoint in self.endpoints.endpoints:
            health = EndpointHealth.load(self.store.get(self._key(endpoint)))
            for model, breaker in sorted(health.breakers.items()):
                if breaker.trips or breaker.state != "closed":
                    lines.append(
                        f"{endpoint.name} ({endpoint.base_url}) model {model}: tripped {breaker.trips}x, "
                        f"now {breaker.describe(now)}"
                    )
            if health.throttled_by:
                lines.append(f"{endpoint.name}: rate-limited by {health.throttled_by}")
        return lines


@dataclass
class _Plan:
    """Where one attempt goes: ``endpoint`` None means not ours to manage, send it as it is."""

    request: httpx2.Request
    endpoint: Endpoint | None = None
    model: str = "*"
    routed: bool = False
    wait: float = 0.0


class RouterLayer:
    """The :class:`~transport.Layer` of one test: picks, refuses, records (see the module docstring)."""

    def __init__(
        self,
        router: Router,
        guard: Guard,
        policy: TestPolicy,
        *,
        sleep: Callable[[float], None] = time.sleep,
        async_sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.router = router
        self.guard = guard
        self.policy = policy
        self._sleep = sleep
        self._async_sleep = async_sleep

    def handle(self, request: httpx2.Request, event: AttemptEvent, send: Send) -> httpx2.Response:
        plan = self._plan(request, event)
        if plan.wait:
            self._sleep(plan.wait)
        with self._recording(plan, request, event) as done:
            return done(send(plan.request))

    async def handle_async(self, request: httpx2.Request, event: AttemptEvent, send: AsyncSend) -> httpx2.Response:
        plan = self._plan(request, event)
        if plan.wait:
            await self._async_sleep(plan.wait)
        with self._recording(plan, request, event) as done:
            return done(await send(plan.request))

    # -- choosing ---------------------------------------------------------------------

    def _plan(self, request: httpx2.Request, event: AttemptEvent) -> _Plan:
        fixture = ROUTE_HEADER in request.headers
        model = event.model or "*"
        if fixture and self.router.endpoints.configured:
            choices = self._order(self.router.candidates(event.model, self.policy.endpoints), request)
            if not choices:
                raise self._no_endpoint_serves(event.model)
            plan = _Plan(request, model=model, routed=True)
        else:
            owner = self.router.endpoints.owner(request.url)
            plan = _Plan(forward(request) if fixture else request, model=model)
            if owner is None:
                return plan
            if self.policy.endpoints is not None and owner.name not in self.policy.endpoints:
                raise self._refusal([(owner, Verdict(False, self._not_allowed()))], request, event, fixture)
            choices = [owner]
        refusals = self._admit_first(plan, choices, event, max_wait=0.0)
        remaining = self.guard.remaining()
        rate_limited = [e for e, verdict in refusals if 0 < verdict.wait < remaining]
        if plan.endpoint is None and rate_limited:  # honour the shortest Retry-After that fits the deadline
            self._admit_first(plan, rate_limited, event, max_wait=remaining)
        if plan.endpoint is None:
            raise self._refusal(refusals, request, event, fixture)
        self._send_to(plan, request, event)
        return plan

    def _order(self, choices: list[Endpoint], request: httpx2.Request) -> list[Endpoint]:
        """Endpoints the call has not tried first, unless it has tried ``max_endpoints`` already."""
        tried = request.extensions.get(TRIED, ())
        fresh = [e for e in choices if e.name not in tried]
        used = [e for e in choices if e.name in tried]
        return used if len(set(tried)) >= self.router.max_endpoints else fresh + used

    def _admit_first(
        self, plan: _Plan, choices: list[Endpoint], event: AttemptEvent, *, max_wait: float
    ) -> list[tuple[Endpoint, Verdict]]:
        """Admit the first endpoint that can take the attempt (after at most ``max_wait``); returns the refusals."""
        refusals = []
        for endpoint in choices:
            cap = min(self.guard.budget.attempt_timeout(), endpoint.call_timeout or math.inf)
            verdict = self.router.admit(
                endpoint, plan.model, retry=event.retry, lease=cap + _LEASE_MARGIN, max_wait=max_wait
            )
            if verdict.ok:
                plan.endpoint, plan.wait = endpoint, verdict.wait
                break
            refusals.append((endpoint, verdict))
        return refusals

    def _send_to(self, plan: _Plan, request: httpx2.Request, event: AttemptEvent) -> None:
        endpoint = plan.endpoint
        assert endpoint is not None
        if plan.routed:
            plan.request = endpoint.address(request, event.model, self.router.environ)
        cap = min(endpoint.call_timeout or math.inf, self.guard.budget.attempt_timeout() - plan.wait)
        self.guard.cap_attempt(event, plan.request, max(0.0, cap))
        tried = request.extensions.get(TRIED, ())
        if tried and tried[-1] != endpoint.name:
            log.warning("%s: failover %s -> %s (model %s)", event.test, tried[-1], endpoint.name, plan.model)
        request.extensions[TRIED] = (*tried, endpoint.name)
        request.extensions.pop(FAILOVER_TO, None)
        event.endpoint_name = endpoint.name
        event.endpoint, event.path = wire.endpoint_of(plan.request), plan.request.url.path
        event.backoff += plan.wait  # the Retry-After wait happens before sending: not network time
        event.start += plan.wait

    # -- recording --------------------------------------------------------------------

    @contextmanager
    def _recording(
        self, plan: _Plan, request: httpx2.Request, event: AttemptEvent
    ) -> Iterator[Callable[[httpx2.Response], httpx2.Response]]:
        """Feed the attempt's outcome to its endpoint's health: ``done(response)``, or the error raised."""

        def done(response: httpx2.Response) -> httpx2.Response:
            self._finished(plan, request, event, response, None)
            return response

        try:
            yield done
        except BaseException as exc:
            self._finished(plan, request, event, None, exc)
            raise

    def _finished(
        self,
        plan: _Plan,
        request: httpx2.Request,
        event: AttemptEvent,
        response: httpx2.Response | None,
        error: BaseException | None,
    ) -> None:
        if plan.endpoint is None:
            return
        status = response.status_code if response is not None else None
        outcome = classify(status, error)
        retry_after = parse_retry_after(response.headers) if response is not None else None
        self.router.record(
            plan.endpoint,
            plan.model,
            outcome,
            error=describe_error(status, error) if outcome is Outcome.FAILURE else None,
            retry_after=retry_after if outcome is Outcome.THROTTLED else None,
        )
        if plan.routed and outcome in (Outcome.FAILURE, Outcome.THROTTLED):
            following = self._next_endpoint(request, event)
            if following is not None and following.name not in request.extensions.get(TRIED, ()):
                event.failover_to = request.extensions[FAILOVER_TO] = following.name

    def _next_endpoint(self, request: httpx2.Request, event: AttemptEvent) -> Endpoint | None:
        """Where a retry of this call would go now (without taking a probe)."""
        choices = self._order(self.router.candidates(event.model, self.policy.endpoints), request)
        model = event.model or "*"
        return next((e for e in choices if self.router.peek(e, model, retry=True).ok), None)

    # -- refusing ---------------------------------------------------------------------

    def _not_allowed(self) -> str:
        names = ", ".join(self.policy.endpoints or ())
        return f"not among the endpoints this test may use (@pytest.mark.{BREAKER_MARKER}(endpoints=[{names}]))"

    def _refusal(
        self, refusals: list[tuple[Endpoint, Verdict]], request: httpx2.Request, event: AttemptEvent, fixture: bool
    ) -> BaseException:
        headline = (
            f"pytest-llm-guard: no endpoint can take this request (model {event.model or '?'}) "
            f"of {event.test} now; nothing was sent:"
        )
        lines = [headline] + [f"  - {e.name} ({e.base_url}): {verdict.reason}" for e, verdict in refusals]
        if not fixture:
            lines.append(
                "The openai SDK raises this as APIConnectionError so the code's own fallback can run; "
                "the refusal counts against the test's retry budget."
            )
            return LLMEndpointUnavailable("\n".join(lines), request=request)
        other = "skip" if self.policy.on_open == "fail" else "fail"
        lines.append(
            f"on_open={self.policy.on_open} (set by {self.policy.on_open_source}); "
            f"on_open='{other}' (@pytest.mark.{BREAKER_MARKER}, {OPTIONS['on_open'].flag}) would {other} instead. "
            "What to do: fix or wait for the endpoint, or add a healthy one to "
            "[[tool.pytest_llm_guard.endpoints]]."
        )
        return LLMNoEndpoint("\n".join(lines), skip=self.policy.on_open == "skip")

    def _no_endpoint_serves(self, model: str | None) -> LLMNoEndpoint:
        allowed = self.policy.endpoints or self.router.endpoints.names
        served = "; ".join(
            f"{e.name}: {', '.join(e.models) or 'any'}" for e in self.router.endpoints.endpoints if e.name in allowed
        )
        return LLMNoEndpoint(
            f"pytest-llm-guard: no endpoint this test may use serves model {model!r} (models served: {served}); "
            f"add it to an endpoint's models in {self.router.endpoints.source}."
        )
