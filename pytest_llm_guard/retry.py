"""Retry decisions, each a small named function, and the senders that apply them to each call.

Which statuses to retry and how long a server asks us to wait are the dialect's answers
(each SDK's own rules), so a guarded client retries exactly what its SDK would, but every
wait is bounded by the test's remaining deadline and every attempt is counted against its budget.
The tenacity policy a due retry runs under is ``backoff.py``'s, loaded on the first retry.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx2

from .dialects import DIALECTS, for_client, of_response
from .ledger import CALL, Call

if TYPE_CHECKING:
    from .clock import Clock
    from .config import Settings


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


def retryable_response(response: httpx2.Response) -> bool:
    """An answer below 400 is never retried (by any API's rules): no dialect is asked."""
    return response.status_code >= 400 and of_response(response).should_retry(response.status_code, response.headers)


def _needs_retry(outcome: Any) -> bool:
    if isinstance(outcome, BaseException):
        return is_retryable_error(outcome)
    return retryable_response(outcome)


def unwrap(outcome: Any) -> httpx2.Response:
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
    pays nothing for the retry machinery (tenacity is not even imported), and the retry
    path is tenacity's, attempt numbers, waits and hooks included (``backoff.py``).
    """

    def send_with_retries(request: httpx2.Request, **send_kwargs: Any) -> httpx2.Response:
        call = request.extensions[CALL] = Call(routed=routed)
        try:
            first: Any = send(request, **send_kwargs)
        except Exception as exc:
            first = exc
        if not _needs_retry(first):
            return unwrap(first)
        made = [first]

        def attempt(request: httpx2.Request, **send_kwargs: Any) -> httpx2.Response:
            return unwrap(made.pop()) if made else send(request, **send_kwargs)

        from .backoff import retry_sync

        return retry_sync(context, call, attempt, request, **send_kwargs)

    return send_with_retries


def async_sender(
    context: RetryContext, send: Callable[..., Awaitable[httpx2.Response]], *, routed: bool
) -> Callable[..., Awaitable[httpx2.Response]]:
    """The async twin of :func:`sync_sender`."""

    async def send_with_retries(request: httpx2.Request, **send_kwargs: Any) -> httpx2.Response:
        call = request.extensions[CALL] = Call(routed=routed)
        try:
            first: Any = await send(request, **send_kwargs)
        except Exception as exc:
            first = exc
        if not _needs_retry(first):
            return unwrap(first)
        made = [first]

        async def attempt(request: httpx2.Request, **send_kwargs: Any) -> httpx2.Response:
            return unwrap(made.pop()) if made else await send(request, **send_kwargs)

        from .backoff import retry_async

        return await retry_async(context, call, attempt, request, **send_kwargs)

    return send_with_retries


def guarded_client(context: RetryContext, client: Any, *, routed: bool, in_place: bool = False) -> Any:
    """A copy of an SDK client whose retries are the guard's (the SDK's own are turned off); the client
    itself, so changed, with ``in_place``."""
    dialect = for_client(client)
    if dialect is None:
        supported = "; ".join(f"{d.sdk}.{', '.join(d.client_names)} and their subclasses" for d in DIALECTS)
        raise TypeError(f"llm_guard.guard() takes an SDK client ({supported}), got {type(client).__name__}")
    return dialect.wrap_client(
        client,
        lambda send: sync_sender(context, send, routed=routed),
        lambda send: async_sender(context, send, routed=routed),
        in_place=in_place,
    )
