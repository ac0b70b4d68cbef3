"""Failover routing and endpoint breakers, as a guard layer at the transport seam.

What a test sees: one discovery of a dead endpoint, shared by the whole session
(and every xdist worker, through the state store); after it, failover in
milliseconds, or a fast fail/skip whose reason names the endpoint, its breaker
state, its last errors and when the next probe is due.

- Calls of the ``llm_client`` fixtures are marked routed (their :class:`~ledger.Call`). With
  endpoints configured they are *routed*: each attempt goes to the first available
  endpoint serving the model (priority, then weight), endpoints this call has not
  tried first, at most ``max_endpoints`` of them per call. When the next attempt will
  go elsewhere, the failed attempt and its call are marked (``failover_to``), the retry
  policy skips the backoff meant for the failed endpoint, and the next attempt is a
  failover, not a retry.
- Requests of any other client (code under test) to a known endpoint are not moved;
  when the endpoint is not available the on-open policy decides at once: by default
  :class:`LLMEndpointUnavailable`, the SDK's ``APIConnectionError``, reaches their fallback.
- Every attempt's outcome feeds the endpoint's breaker, rate-limit cooldown and
  retry tokens (``breaker.py``). Requests to other URLs pass untouched.
- A routed call that finds an endpoint's half-open probe due while another endpoint can
  take its attempt sends the attempt there and the probe beside it, off the test's clock
  (``probes.py``); with no other endpoint available the probe is the attempt.

Breakers see an attempt's status and transport errors, i.e. whether the endpoint
answered, and what failed before a stream's first content (the seam reads a stream
ahead to it below this layer: an error event, a cut, a missed first token); a body cut
after that is the guard's business (deadline, call cap, idle gap), not the breaker's.
"""

from __future__ import annotations

__tracebackhide__ = True  # pytest: a failed test shows where the LLM call was made, not our internals

import functools
import logging
import math
import os
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import httpx2

from . import probes, report
from .breaker import EndpointHealth, Outcome, Verdict, classify, describe_error
from .clock import REAL, Clock
from .config import BREAKER_MARKER, Settings
from .dialects import Dialect, dialect_for, named, origin_of, request_json
from .endpoints import Endpoint, EndpointSet
from .errors import LLMNoEndpoint
from .ledger import CALL, Attempt, Call, Probe
from .state import StateStore

if TYPE_CHECKING:
    from .pipeline import AsyncSend, AttemptContext, Send
    from .ratelimit import RateLimiter

log = logging.getLogger("pytest_llm_guard")
T = TypeVar("T")

_LEASE_MARGIN = 1.0
"""Seconds a half-open probe is held beyond its attempt's cap before another caller may probe."""
_TRUSTED_SHARE = 0.1
"""The share of ``breaker_cooldown`` for which a process trusts its copy of a healthy endpoint's record."""


class LLMEndpointUnavailable(httpx2.ConnectError):
    """A call found its endpoint's breaker open (or the endpoint rate-limited) and ``on_open`` is ``fallback``.

    Raised as the ``APIConnectionError`` of the SDK that sent the call (see
    :func:`endpoint_unavailable`), so the application's own fallback runs, and as that
    SDK's own error, which the SDK re-raises from its transport at once, without its own
    retries; it is also an ``httpx2.ConnectError`` for code that calls httpx2 directly.
    Not charged to ``retries``: nothing was sent. The message tells the breaker's story:
    endpoint, model, why and when it opened, the next probe, and the policy in force.
    """

    def __init__(self, message: str, *, request: httpx2.Request | None = None, endpoints: tuple[str, ...] = ()) -> None:
        httpx2.ConnectError.__init__(self, message, request=request)
        self.message = message
        self.endpoints = endpoints
        """The endpoints that refused it, first the one it was meant for."""

    def __str__(self) -> str:
        return self.message


_DRESSED: dict[str, type[LLMEndpointUnavailable]] = {}


def endpoint_unavailable(message: str, *, request: httpx2.Request, endpoints: tuple[str, ...] = ()) -> BaseException:
    """The refusal as the connection error of the SDK that sent ``request`` (a plain one for other clients)."""
    dialect = dialect_for(request)
    if dialect is None:
        return LLMEndpointUnavailable(message, request=request, endpoints=endpoints)
    dressed = _DRESSED.get(dialect.name)
    if dressed is None:
        sdk_error = dialect.connection_error()

        def __init__(self: Any, message: str, *, request: httpx2.Request, endpoints: tuple[str, ...] = ()) -> None:
            sdk_error.__init__(self, message=message, request=request)
            self.endpoints = endpoints

        namespace = {"__init__": __init__, "__module__": __name__, "__doc__": LLMEndpointUnavailable.__doc__}
        dressed = _DRESSED[dialect.name] = type(
            "LLMEndpointUnavailable", (sdk_error, LLMEndpointUnavailable), namespace
        )
    return dressed(message, request=request, endpoints=endpoints)


def _beside(plan: _Plan, ctx: AttemptContext) -> bool:
    """May a probe go beside this attempt? A routed call of a client on the network (no mock, no cassette
    library answering), whose body can be sent twice (an SDK's always can)."""
    if not (plan.routed and ctx.network) or probes.intercepted():
        return False
    try:
        plan.request.content  # noqa: B018
    except httpx2.RequestNotRead:
        return False
    return True


def _probe_verdict(outcome: Outcome, error: BaseException | None) -> str:
    """What a probe's answer did to its breaker, for the ledger and reports."""
    if outcome is Outcome.SUCCESS:
        return "breaker closed: later requests go to it again"
    if outcome is Outcome.FAILURE:
        still = "still hanging" if isinstance(error, httpx2.TimeoutException) else "still failing"
        return f"{still}: breaker open again, its cooldown doubled"
    if outcome is Outcome.THROTTLED:
        return "rate-limited: no verdict, a later request probes it again"
    return "no verdict: a later request probes it again"


def _kinds(attempt: Attempt) -> tuple[str, ...] | None:
    """The endpoint kinds that speak the attempt's API: a call never fails over to another API."""
    dialect = named(attempt.dialect)
    return dialect.kinds if dialect is not None else None


@dataclass
class _View:
    """This process's copy of one endpoint's shared health, and when (``Clock.wall``) it was read."""

    health: EndpointHealth
    read_at: float
    quiet: set[str] = field(default_factory=set)
    """Models for which a success changes nothing here (:meth:`EndpointHealth.unchanged_by`): known once,
    true while this copy lives (a change makes a new copy; only time passes, which keeps it true)."""


class Router:
    """The session's view of its endpoints: their order and their shared health (``state.py``).

    The healthy path costs no store round trip: each endpoint's health is kept in the process
    (:class:`_View`) and every change is written at once (a failure, a 429, a probe, a transition,
    a token spent), but an attempt that changes nothing is not (a success on a breaker whose window
    holds only successes). While a model's breaker is settled (closed, no failure in its window,
    tokens full: :meth:`EndpointHealth.settled`) the copy is trusted for a tenth of
    ``breaker_cooldown`` before the store is read again; otherwise the store is read at every
    attempt, as before. So what another xdist worker changes is seen at once where the endpoint is
    in trouble, and where it looked healthy here within a tenth of the cooldown (a trip is seen for
    nine tenths of its open time at least), or at this process's own next failure there, since each
    write reads the record afresh.
    """

    def __init__(
        self,
        endpoints: EndpointSet,
        store: StateStore,
        policy: Settings,
        *,
        clock: Clock = REAL,
        rng: random.Random | None = None,
        environ: Mapping[str, str] = os.environ,
    ) -> None:
        self.endpoints = endpoints
        self.store = store
        self.policy = policy
        self.max_endpoints = policy.max_endpoints
        self.clock = clock
        """Breakers are shared between processes, so they keep the time of day (``Clock.wall``)."""
        self.rng = rng or random.Random()
        self.environ = environ
        self._views: dict[str, _View] = {}
        """This process's copy of each endpoint's health, by endpoint name."""
        self.prober = probes.Prober()
        """Half-open probes sent beside a test's attempt, in the background (``probes.py``)."""

    def close(self) -> None:
        """The session ends: probes still out are left, and record nothing any more."""
        self.prober.close()

    @staticmethod
    def _key(endpoint: Endpoint) -> str:
        return f"endpoint:{endpoint.name}"

    def candidates(
        self, model: str | None, allowed: tuple[str, ...] | None, kinds: tuple[str, ...] | None = None
    ) -> list[Endpoint]:
        """Endpoints (of ``kinds``) serving ``model``: by priority, equal priorities in a weighted random order."""
        pool = [
            e
            for e in self.endpoints.endpoints
            if e.serves(model) and (allowed is None or e.name in allowed) and (kinds is None or e.kind in kinds)
        ]
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
        now = self.clock.wall()
        health = self._read(endpoint, model, now)
        if health.breaker(model).state == "closed":  # admitting changes nothing: the copy decides
            return health.admit(model, now, self.policy, retry=retry, lease=lease, max_wait=max_wait)

        return self._change(
            endpoint,
            model,
            now,
            lambda h: h.admit(model, now, self.policy, retry=retry, lease=lease, max_wait=max_wait),
        )

    def quiet(self, endpoint: Endpoint, model: str) -> bool:
        """Would :meth:`admit` take an attempt at once, and would its success change nothing? Told by this
        process's trusted copy alone (:meth:`_read`): a settled breaker whose window is all successes, every
        retry token there, no Retry-After to wait out, its key set. Then an attempt needs no verdict."""
        if endpoint.api_key_env and endpoint.api_key(self.environ) is None:
            return False
        view = self._views.get(endpoint.name)
        now = self.clock.wall()
        return view is not None and self._trusted(view, now) and self._quiet(view, model, now)

    def _trusted(self, view: _View, now: float) -> bool:
        """Is this process's copy young enough to decide alone (read within a tenth of the cooldown)?"""
        return view.read_at <= now < view.read_at + self.policy.breaker_cooldown * _TRUSTED_SHARE

    def _quiet(self, view: _View, model: str, now: float) -> bool:
        if model in view.quiet:
            return True
        if view.health.unchanged_by(model, Outcome.SUCCESS, now, self.policy):
            view.quiet.add(model)
            return True
        return False

    def peek(self, endpoint: Endpoint, model: str, *, retry: bool) -> Verdict:
        """:meth:`admit` without taking the probe: where would a retry go?"""
        missing = self._missing_key(endpoint)
        if missing is not None:
            return missing
        now = self.clock.wall()
        return self._read(endpoint, model, now).peek(model, now, self.policy, retry=retry)

    def record(
        self,
        endpoint: Endpoint,
        model: str,
        outcome: Outcome,
        *,
        error: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        view = self._views.get(endpoint.name)
        if view is not None and outcome is Outcome.SUCCESS and model in view.quiet:
            return  # the healthy path: known quiet (``_quiet``), so not even the clock is read
        now = self.clock.wall()
        if view is not None and (
            self._quiet(view, model, now)
            if outcome is Outcome.SUCCESS
            else view.health.unchanged_by(model, outcome, now, self.policy)
        ):
            return

        self._change(
            endpoint,
            model,
            now,
            lambda h: h.record(model, outcome, now, self.policy, error=error, retry_after=retry_after),
        )

    def _change(self, endpoint: Endpoint, model: str, now: float, act: Callable[[EndpointHealth], T]) -> T:
        """``act`` on the endpoint's shared health in one atomic store update; this process's copy becomes
        what was written, and the breaker's transitions are logged."""

        def change(record: dict[str, Any]) -> tuple[T, EndpointHealth, list[dict[str, Any]]]:
            health = EndpointHealth.load(record)
            before = len(health.breaker(model).transitions)
            result = act(health)
            health.dump(record)
            return result, health, health.breaker(model).transitions[before:]

        result, health, moved = self.store.update(self._key(endpoint), change)
        self._views[endpoint.name] = _View(health, now)
        self._log(endpoint, model, moved)
        return result

    def _read(self, endpoint: Endpoint, model: str, now: float) -> EndpointHealth:
        """The endpoint's health: this process's copy while it is settled and younger than a tenth of
        the cooldown, else read from the store now."""
        view = self._views.get(endpoint.name)
        if view is None or not self._trusted(view, now) or not view.health.settled(model, now, self.policy):
            view = self._views[endpoint.name] = _View(EndpointHealth.load(self.store.get(self._key(endpoint))), now)
        return view.health

    @staticmethod
    def _log(endpoint: Endpoint, model: str, moved: list[dict[str, Any]]) -> None:
        for change in moved:
            log.warning(
                "breaker of %s, model %s: %s -> %s %s",
                endpoint.name,
                model,
                change["from"],
                change["to"],
                change["why"],
            )

    def health(self) -> list[tuple[Endpoint, EndpointHealth]]:
        """Every endpoint and its shared health now (for reports)."""
        return [(e, EndpointHealth.load(self.store.get(self._key(e)))) for e in self.endpoints.endpoints]

    def status(self) -> list[str]:
        """One line per breaker that tripped or endpoint that was rate-limited this session."""
        lines = []
        now = self.clock.wall()
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
    call: Call | None
    endpoint: Endpoint | None = None
    model: str = "*"
    routed: bool = False
    wait: float = 0.0
    """Seconds to wait before sending, asked by the endpoint (a Retry-After)."""
    limit_wait: float = 0.0
    """Seconds more to wait for its turn under a shared rate limit (``ratelimit.py``)."""
    aside: tuple[Endpoint, float] | None = None
    """A half-open endpoint whose probe goes beside the attempt (and that probe's cap), when another
    endpoint takes the attempt."""

    @property
    def delay(self) -> float:
        """Seconds it waits before it is sent, in all."""
        return self.wait + self.limit_wait


class RouterLayer:
    """The routing layer of one test: picks, refuses, records (see the module docstring)."""

    def __init__(self, router: Router, settings: Settings) -> None:
        self.router = router
        self.settings = settings

    @functools.cached_property
    def limiter(self) -> RateLimiter:
        """The shared limits at work, once a request meets one (a session with none never loads them)."""
        from .ratelimit import RateLimiter

        return RateLimiter(self.router.store, self.router.clock, self.router.endpoints.source)

    def handle(self, request: httpx2.Request, ctx: AttemptContext, send: Send) -> httpx2.Response:
        plan = self._plan(request, ctx)
        if plan.delay:
            ctx.clock.sleep(plan.delay)  # a Retry-After, a rate limit's turn: waited out on the test's clock
        try:
            response = send(plan.request)
        except BaseException as exc:
            self._finished(plan, ctx.attempt, None, exc)
            raise
        self._finished(plan, ctx.attempt, response, None)
        return response

    async def handle_async(self, request: httpx2.Request, ctx: AttemptContext, send: AsyncSend) -> httpx2.Response:
        plan = self._plan(request, ctx)
        if plan.delay:
            await ctx.clock.async_sleep(plan.delay)
        try:
            response = await send(plan.request)
        except BaseException as exc:
            self._finished(plan, ctx.attempt, None, exc)
            raise
        self._finished(plan, ctx.attempt, response, None)
        return response

    # -- choosing ---------------------------------------------------------------------

    def _plan(self, request: httpx2.Request, ctx: AttemptContext) -> _Plan:
        attempt = ctx.attempt
        call: Call | None = request.extensions.get(CALL)
        fixture = call is not None and call.routed
        plan = _Plan(request, call, model=attempt.model or "*")
        if fixture and self.router.endpoints.configured:
            choices = self._order(self.router.candidates(attempt.model, self.settings.endpoints, _kinds(attempt)), call)
            if not choices:
                raise self._no_endpoint_serves(attempt.model, _kinds(attempt))
            plan.routed = True
        else:
            owner = self.router.endpoints.owner(request.url)
            if owner is None:
                return plan
            if self.settings.endpoints is not None and owner.name not in self.settings.endpoints:
                raise self._refusal([(owner, Verdict(False, self._not_allowed()))], request, ctx, fixture)
            choices = [owner]
        if self._quiet(choices[0], plan.model):  # the healthy path: no verdict, turn or probe to take
            plan.endpoint = choices[0]
            self._send_to(plan, ctx)
            return plan
        refusals = self._admit_first(plan, choices, ctx, max_wait=0.0)
        remaining = ctx.remaining()
        rate_limited = [e for e, verdict in refusals if 0 < verdict.wait < remaining]
        if plan.endpoint is None and plan.aside is None and rate_limited:  # the shortest Retry-After that fits
            self._admit_first(plan, rate_limited, ctx, max_wait=remaining)
        if plan.endpoint is None and plan.aside is not None:  # no other endpoint takes it: the probe is the attempt
            plan.endpoint, plan.aside = plan.aside[0], None
        if plan.endpoint is None:
            raise self._refusal(refusals, request, ctx, fixture)
        self._take_turn(plan, ctx, fixture)
        if plan.aside is not None:
            self._probe_beside(plan, ctx)
        self._send_to(plan, ctx)
        return plan

    def _quiet(self, endpoint: Endpoint, model: str) -> bool:
        """The healthy path: the endpoint takes the attempt at once, with no verdict, turn or probe to take
        (``Router.quiet``, and no shared rate limit). What the full path would conclude, without its work."""
        return not endpoint.rate_limited(self.settings) and self.router.quiet(endpoint, model)

    def _order(self, choices: list[Endpoint], call: Call | None) -> list[Endpoint]:
        """Endpoints the call has not tried first, unless it has tried ``max_endpoints`` already."""
        tried = call.tried if call is not None else []
        fresh = [e for e in choices if e.name not in tried]
        used = [e for e in choices if e.name in tried]
        return used if len(set(tried)) >= self.router.max_endpoints else fresh + used

    def _admit_first(
        self, plan: _Plan, choices: list[Endpoint], ctx: AttemptContext, *, max_wait: float
    ) -> list[tuple[Endpoint, Verdict]]:
        """Admit the first endpoint that can take the attempt (after at most ``max_wait``); returns the refusals.

        A routed call that takes a half-open probe keeps looking: the probe goes beside the attempt
        (``plan.aside``) if another endpoint takes the attempt, and is the attempt if none does.
        """
        refusals = []
        for endpoint in choices:
            cap = min(ctx.attempt_cap(), endpoint.call_timeout or math.inf)
            verdict = self.router.admit(
                endpoint, plan.model, retry=ctx.attempt.number > 1, lease=cap + _LEASE_MARGIN, max_wait=max_wait
            )
            if not verdict.ok:
                refusals.append((endpoint, verdict))
            elif verdict.probe and plan.aside is None and not verdict.wait and _beside(plan, ctx):
                plan.aside = (endpoint, cap)
            else:
                plan.endpoint, plan.wait = endpoint, verdict.wait
                break
        return refusals

    def _take_turn(self, plan: _Plan, ctx: AttemptContext, fixture: bool) -> None:
        """The request's turn under its endpoint's shared rate limits: now, after a wait that fits in the
        test's time left, or refused at once, as a Retry-After that does not fit is."""
        endpoint, attempt = plan.endpoint, ctx.attempt
        assert endpoint is not None
        if not endpoint.rate_limited(self.settings):  # no turn to take: now, as a turn with no limit is
            return
        dialect = named(attempt.dialect)

        def tokens() -> int:
            return dialect.estimated_tokens(request_json(plan.request)) if dialect is not None else 0

        remaining = ctx.remaining()
        turn = self.limiter.turn(
            endpoint, plan.model, tokens, attempt, self.settings, after=plan.wait, max_wait=remaining
        )
        if turn.refused:
            reason = self.limiter.refusal(turn, endpoint, plan.model, remaining - plan.wait)
            raise self._refusal([(endpoint, Verdict(False, reason))], plan.request, ctx, fixture)
        plan.limit_wait = attempt.limit_wait = turn.wait
        attempt.limit_by = str(turn.by) if turn.by is not None else None

    def _probe_beside(self, plan: _Plan, ctx: AttemptContext) -> None:
        """Send the half-open endpoint's probe in the background: a copy of the request as that endpoint
        must receive it, with the timeouts the attempt would have had there. Its answer feeds the breaker
        and the test's ledger (a :class:`Probe`), nothing else."""
        assert plan.aside is not None and plan.endpoint is not None
        (endpoint, cap), attempt, clock = plan.aside, ctx.attempt, ctx.clock
        dialect: Dialect | None = dialect_for(plan.request)
        assert dialect is not None  # only LLM requests reach the layers
        timeouts = [t for t in (plan.request.extensions.get("timeout") or {}).values() if t is not None]
        bound = min(cap, max(timeouts, default=math.inf))  # the attempt's cap there, else its client's timeout
        addressed = endpoint.address(plan.request, attempt.model, self.router.environ)
        request = probes.copy(addressed, plan.request.content, bound)
        probe = Probe(endpoint.name, attempt.model, attempt.call, plan.endpoint.name, start=clock.now())
        ctx.ledger.probe(probe)
        model = plan.model

        def report(status: int | None, error: BaseException | None, retry_after: float | None) -> None:
            outcome = classify(status, error)
            self.router.record(
                endpoint,
                model,
                outcome,
                error=describe_error(status, error) if outcome is Outcome.FAILURE else None,
                retry_after=retry_after if outcome is Outcome.THROTTLED else None,
            )
            probe.outcome = probes.outcome(status, error)
            probe.breaker = _probe_verdict(outcome, error)
            probe.end = clock.now()

        log.info(
            "%s: probe of %s beside the attempt to %s (model %s)",
            attempt.test,
            endpoint.name,
            plan.endpoint.name,
            model,
        )
        self.router.prober.send(request, dialect, bound, report, name=f"{probes.THREAD} of {endpoint.name}")

    def _send_to(self, plan: _Plan, ctx: AttemptContext) -> None:
        attempt, endpoint = ctx.attempt, plan.endpoint
        assert endpoint is not None
        if plan.routed:  # addressed anew: the attempt goes elsewhere than the seam saw
            plan.request = endpoint.address(plan.request, attempt.model, self.router.environ)
            attempt.endpoint, attempt.path = origin_of(plan.request.url), plan.request.url.path
        call = plan.call
        if call is not None:
            if attempt.kind == "failover":
                previous = call.tried[-1] if call.tried else "?"
                log.warning("%s: failover %s -> %s (model %s)", attempt.test, previous, endpoint.name, plan.model)
            call.tried.append(endpoint.name)
            call.failover_to = None
        attempt.endpoint_name = endpoint.name
        attempt.backoff += plan.wait  # waited before sending (a Retry-After): the gap to the last attempt grows
        delay = plan.delay
        attempt.start += delay
        if endpoint.call_timeout is not None:
            ctx.cap(plan.request, endpoint.call_timeout, f"call_timeout of endpoint {endpoint.name}")
        first_token, idle = endpoint.first_token_timeout, endpoint.idle_timeout
        if attempt.stream is not None and (first_token is not None or idle is not None):
            attempt.stream.limit(first_token, idle, f" of endpoint {endpoint.name}")
        if delay:
            ctx.cap(plan.request, max(0.0, ctx.attempt_cap() - delay), "deadline")

    # -- recording --------------------------------------------------------------------

    def _finished(
        self, plan: _Plan, attempt: Attempt, response: httpx2.Response | None, error: BaseException | None
    ) -> None:
        """Feed the attempt's outcome (its response, or the error raised) to its endpoint's health."""
        if plan.endpoint is None:
            return
        status = response.status_code if response is not None else None
        outcome = classify(status, error)
        self.router.record(
            plan.endpoint,
            plan.model,
            outcome,
            error=describe_error(status, error) if outcome is Outcome.FAILURE else None,
            retry_after=attempt.retry_after if outcome is Outcome.THROTTLED else None,
        )
        call = plan.call
        if plan.routed and call is not None and outcome in (Outcome.FAILURE, Outcome.THROTTLED):
            following = self._next_endpoint(call, attempt)
            if following is not None and following.name not in call.tried:
                attempt.failover_to = call.failover_to = following.name

    def _next_endpoint(self, call: Call, attempt: Attempt) -> Endpoint | None:
        """Where a retry of this call would go now (without taking a probe): past a due probe, which
        goes beside it, to the first endpoint that takes it; to the probed endpoint if none does."""
        choices = self._order(self.router.candidates(attempt.model, self.settings.endpoints, _kinds(attempt)), call)
        model = attempt.model or "*"
        probed = None
        for endpoint in choices:
            verdict = self.router.peek(endpoint, model, retry=True)
            if verdict.ok and not verdict.probe:
                return endpoint
            if verdict.ok and probed is None:
                probed = endpoint
        return probed

    # -- refusing ---------------------------------------------------------------------

    def _not_allowed(self) -> str:
        names = ", ".join(self.settings.endpoints or ())
        return f"not among the endpoints this test may use (@pytest.mark.{BREAKER_MARKER}(endpoints=[{names}]))"

    def _refusal(
        self, refusals: list[tuple[Endpoint, Verdict]], request: httpx2.Request, ctx: AttemptContext, fixture: bool
    ) -> BaseException:
        """Nothing can take the attempt: it is refused, named after the endpoint it was meant for, and the
        on-open policy decides what the caller meets (a failure, a skip, or its own fallback)."""
        policy = self.settings.on_open or ("fail" if fixture else "fallback")
        attempt = ctx.attempt
        attempt.source = "refused"
        attempt.endpoint_name = refusals[0][0].name
        attempt.error = "\n".join(f"{e.name} ({e.base_url}): {verdict.reason}" for e, verdict in refusals)
        message = report.no_endpoint(
            attempt.test,
            attempt.model,
            [(e.name, e.base_url, verdict.reason) for e, verdict in refusals],
            ctx.ledger,
            attempt,
            fixture=fixture,
            on_open=policy,
            on_open_source=self.settings.source_of("on_open"),
            breaker_marker=BREAKER_MARKER,
        )
        names = tuple(e.name for e, _ in refusals)
        if policy == "fallback":
            return endpoint_unavailable(message, request=request, endpoints=names)
        return LLMNoEndpoint(message, skip=policy == "skip", endpoints=names)

    def _no_endpoint_serves(self, model: str | None, kinds: tuple[str, ...] | None) -> LLMNoEndpoint:
        allowed = self.settings.endpoints or self.router.endpoints.names
        mine = [e for e in self.router.endpoints.endpoints if e.name in allowed and (kinds is None or e.kind in kinds)]
        if kinds is not None and not mine:
            wanted = " or ".join(repr(kind) for kind in kinds)
            configured = ", ".join(f"{e.name} (kind {e.kind!r})" for e in self.router.endpoints.endpoints)
            return LLMNoEndpoint(
                f"pytest-llm-guard: this call speaks another API than the endpoints this test may use "
                f"({configured}): it needs an endpoint of kind {wanted}. Add one to {self.router.endpoints.source}."
            )
        served = "; ".join(
            f"{e.name}: {', '.join(e.models) or 'any'}" for e in self.router.endpoints.endpoints if e.name in allowed
        )
        return LLMNoEndpoint(
            f"pytest-llm-guard: no endpoint this test may use serves model {model!r} (models served: {served}); "
            f"add it to an endpoint's models in {self.router.endpoints.source}."
        )
