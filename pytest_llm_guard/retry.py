"""Retry decisions, each a small named function, and the tenacity policies built from them.

Which statuses to retry and how long a server asks us to wait are the dialect's answers
(each SDK's own rules), so a guarded client retries exactly what its SDK would, but every
wait is bounded by the test's remaining deadline and every attempt is counted against its budget.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx2
from tenacity import AsyncRetrying, RetryCallState, Retrying, retry_if_exception, retry_if_result
from tenacity.wait import wait_base, wait_exponential_jitter

from .dialects import DIALECTS, dialect_for, for_client, of_response
from .ledger import CALL, Call

if TYPE_CHECKING:
    from .clock import Clock
    from .config import Settings

log = logging.getLogger("pytest_llm_guard")


@dataclass(frozen=True)
class RetryContext:
    """What a guarded client's retry loop needs of its test, and no more: the loop never calls
    back into the guard. Each retry is a new attempt, which the seam opens and budgets."""

    test_id: str
    settings: Settings
    """The backoff's initial and largest waits."""
    remaining: Callable[[], float]
    """Seconds left before the test's deadline: our own backoff leaves half of them for the next attempt."""
    clock: Clock
    """The test's one clock: every wait is slept on it."""


def is_retryable_error(exc: BaseException) -> bool:
    """Timeouts, dropped connections and broken responses can succeed later; nothing else can.

    Like the SDKs, no SDK error raised at the transport is retried: such is a refusal
    (``LLMEndpointUnavailable``: every endpoint's breaker open), where the on-open policy has decided.
    """
    sdk_errors = tuple(error for error in (d.sdk_error() for d in DIALECTS) if error is not None)
    if isinstance(exc, sdk_errors):
        return False
    return isinstance(exc, (httpx2.TimeoutException, httpx2.NetworkError, httpx2.RemoteProtocolError))


def _retryable_response(response: httpx2.Response) -> bool:
    """An answer below 400 is never retried (by any API's rules): no dialect is asked."""
    return response.status_code >= 400 and of_response(response).should_retry(response.status_code, response.headers)


class wait_server_hint(wait_base):
    """Wait what the server asked for (Retry-After), else fall back to the backoff."""

    def __init__(self, fallback: wait_base) -> None:
        self.fallback = fallback

    def __call__(self, retry_state: RetryCallState) -> float:
        outcome = retry_state.outcome
        call: Call | None = retry_state.args[0].extensions.get(CALL)
        if outcome is not None and not outcome.failed and call is not None and call.last is not None:
            hint = call.last.retry_after
            if hint is not None:
                return hint
        return self.fallback(retry_state)


class wait_within_deadline(wait_base):
    """Cap a backoff so that half of the remaining deadline is left for the next attempt.

    Applied to our own backoff only: a server-requested wait is honoured as asked, and
    one longer than what remains never gets here (``Budget.check_failure`` fails the
    test at once instead).
    """

    def __init__(self, inner: wait_base, remaining: Callable[[], float]) -> None:
        self.inner = inner
        self.remaining = remaining

    def __call__(self, retry_state: RetryCallState) -> float:
        return max(0.0, min(self.inner(retry_state), self.remaining() / 2))


class wait_unless_failover(wait_base):
    """No wait when the next attempt goes to another endpoint: the backoff (or the server's
    Retry-After) was meant for the endpoint that just failed, not for the healthy one."""

    def __init__(self, inner: wait_base) -> None:
        self.inner = inner

    def __call__(self, retry_state: RetryCallState) -> float:
        call: Call | None = retry_state.args[0].extensions.get(CALL)
        return 0.0 if call is not None and call.failover_to else self.inner(retry_state)


def policy(context: RetryContext) -> dict[str, Any]:
    """The test's retry policy as ``Retrying`` keyword arguments: built once per client, stateless."""
    settings = context.settings
    backoff = wait_exponential_jitter(
        multiplier=settings.backoff_initial, max=settings.backoff_max, jitter=settings.backoff_initial
    )

    def mark_retry(retry_state: RetryCallState) -> None:
        request: httpx2.Request = retry_state.args[0]
        dialect = dialect_for(request)
        if dialect is not None and retry_state.attempt_number > 1:
            dialect.mark_retry(request, retry_state.attempt_number - 1)

    return dict(
        retry=retry_if_exception(is_retryable_error) | retry_if_result(_retryable_response),
        wait=wait_unless_failover(wait_server_hint(fallback=wait_within_deadline(backoff, context.remaining))),
        before=mark_retry,
        reraise=True,
        # No stop: the test's retry budget and deadline end the loop (LLMBudgetExceeded).
    )


def _log_retry(test_id: str, call: Call, retry_state: RetryCallState) -> None:
    wait = retry_state.next_action.sleep if retry_state.next_action is not None else 0.0
    where = f"failover to {call.failover_to}" if call.failover_to else f"retry in {wait:.2f} s"
    log.info("%s: call %s, attempt %s failed: %s", test_id, call.number, retry_state.attempt_number, where)


def _close_retried_response(retry_state: RetryCallState) -> None:
    outcome = retry_state.outcome
    if outcome is not None and not outcome.failed:
        outcome.result().close()


async def _aclose_retried_response(retry_state: RetryCallState) -> None:
    outcome = retry_state.outcome
    if outcome is not None and not outcome.failed:
        await outcome.result().aclose()


def _needs_retry(outcome: Any) -> bool:
    if isinstance(outcome, BaseException):
        return is_retryable_error(outcome)
    return _retryable_response(outcome)


def _unwrap(outcome: Any) -> httpx2.Response:
    if isinstance(outcome, BaseException):
        raise outcome
    return outcome


def sync_sender(
    context: RetryContext, send: Callable[..., httpx2.Response], *, routed: bool
) -> Callable[..., httpx2.Response]:
    """Wrap an SDK client's per-attempt ``_send_request`` in the guard's retry policy.

    The request carries its :class:`~ledger.Call` from attempt to attempt; one
    ``Retrying`` per call, as tenacity requires for concurrent calls. Most calls succeed
    at once, so the first attempt is made directly, and tenacity takes over only when a
    retry is due, with that attempt handed to it as its first outcome: the happy path
    pays nothing for the retry machinery, and the retry path is tenacity's, attempt
    numbers, waits and hooks included.
    """

    kwargs = policy(context)

    def send_with_retries(request: httpx2.Request, **send_kwargs: Any) -> httpx2.Response:
        call = request.extensions[CALL] = Call(routed=routed)
        try:
            first: Any = send(request, **send_kwargs)
        except Exception as exc:
            first = exc
        if not _needs_retry(first):
            return _unwrap(first)
        made = [first]

        def attempt(request: httpx2.Request, **send_kwargs: Any) -> httpx2.Response:
            return _unwrap(made.pop()) if made else send(request, **send_kwargs)

        def before_sleep(retry_state: RetryCallState) -> None:
            _log_retry(context.test_id, call, retry_state)
            _close_retried_response(retry_state)

        retrying = Retrying(sleep=context.clock.sleep, before_sleep=before_sleep, **kwargs)
        return retrying(attempt, request, **send_kwargs)

    return send_with_retries


def async_sender(
    context: RetryContext, send: Callable[..., Awaitable[httpx2.Response]], *, routed: bool
) -> Callable[..., Awaitable[httpx2.Response]]:
    """The async twin of :func:`sync_sender`."""

    kwargs = policy(context)

    async def send_with_retries(request: httpx2.Request, **send_kwargs: Any) -> httpx2.Response:
        call = request.extensions[CALL] = Call(routed=routed)
        try:
            first: Any = await send(request, **send_kwargs)
        except Exception as exc:
            first = exc
        if not _needs_retry(first):
            return _unwrap(first)
        made = [first]

        async def attempt(request: httpx2.Request, **send_kwargs: Any) -> httpx2.Response:
            return _unwrap(made.pop()) if made else await send(request, **send_kwargs)

        async def before_sleep(retry_state: RetryCallState) -> None:
            _log_retry(context.test_id, call, retry_state)
            await _aclose_retried_response(retry_state)

        retrying = AsyncRetrying(sleep=context.clock.async_sleep, before_sleep=before_sleep, **kwargs)
        return await retrying(attempt, request, **send_kwargs)

    return send_with_retries


def guarded_client(context: RetryContext, client: Any, *, routed: bool) -> Any:
    """A copy of an SDK client whose retries are the guard's (the SDK's own are turned off)."""
    dialect = for_client(client)
    if dialect is None:
        supported = "; ".join(f"{d.sdk}.{', '.join(d.client_names)} and their subclasses" for d in DIALECTS)
        raise TypeError(f"llm_guard.guard() takes an SDK client ({supported}), got {type(client).__name__}")
    return dialect.wrap_client(
        client,
        lambda send: sync_sender(context, send, routed=routed),
        lambda send: async_sender(context, send, routed=routed),
    )
