"""The tenacity policy a due retry runs under: what it retries, how long it waits, and the loop.

Loaded on a guarded call's first retry (``retry.py`` makes the first attempt itself): a session
whose calls all succeed at once never imports tenacity.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import httpx2
from tenacity import AsyncRetrying, RetryCallState, Retrying, retry_if_exception, retry_if_result
from tenacity.wait import wait_base, wait_exponential_jitter

from .dialects import dialect_for
from .ledger import CALL, Call
from .retry import is_retryable_error, retryable_response

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from .retry import RetryContext

log = logging.getLogger("pytest_llm_guard")


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
    """The test's retry policy as ``Retrying`` keyword arguments: stateless."""
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
        retry=retry_if_exception(is_retryable_error) | retry_if_result(retryable_response),
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


def retry_sync(
    context: RetryContext,
    call: Call,
    attempt: Callable[..., httpx2.Response],
    request: httpx2.Request,
    **send_kwargs: Any,
) -> httpx2.Response:
    """Retry a call whose first attempt is due a retry: ``attempt`` hands that first outcome back, then sends."""

    def before_sleep(retry_state: RetryCallState) -> None:
        _log_retry(context.test_id, call, retry_state)
        _close_retried_response(retry_state)

    retrying = Retrying(sleep=context.clock.sleep, before_sleep=before_sleep, **policy(context))
    return retrying(attempt, request, **send_kwargs)


async def retry_async(
    context: RetryContext,
    call: Call,
    attempt: Callable[..., Awaitable[httpx2.Response]],
    request: httpx2.Request,
    **send_kwargs: Any,
) -> httpx2.Response:
    """The async twin of :func:`retry_sync`."""

    async def before_sleep(retry_state: RetryCallState) -> None:
        _log_retry(context.test_id, call, retry_state)
        await _aclose_retried_response(retry_state)

    retrying = AsyncRetrying(sleep=context.clock.async_sleep, before_sleep=before_sleep, **policy(context))
    return await retrying(attempt, request, **send_kwargs)
