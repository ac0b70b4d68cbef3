"""The fixture clients' network transport, built at the first request that reaches the network.

Building httpx2's transport imports httpcore2 (its connection pools, HTTP/1.1 and HTTP/2, proxies:
some 8 ms once per process) and sets up a pool; a session that only replays cassettes sends nothing
to the network, so it never needs one. :func:`deferring` gives an SDK's default httpx2 client class
whose default transport is built by that class's own ``_init_transport``, with the same arguments,
at the first request that reaches it: the transport in use is the one the client would have built.
Transports for the environment's proxies are built as before (httpx2 builds them separately).
"""

from __future__ import annotations

import functools
import threading
import weakref
from collections.abc import Callable
from typing import Any

import httpx2


class _Deferred:
    """A network transport built at its first request (or never): ``transport``."""

    def __init__(self, build: Callable[[], Any]) -> None:
        self._build = build
        self._built: Any = None
        self._building = threading.Lock()

    @property
    def transport(self) -> Any:
        """The transport itself, built now if it was not yet."""
        built = self._built
        if built is None:
            with self._building:  # requests from several threads at once build it once
                if self._built is None:
                    self._built = self._build()
                built = self._built
        return built


class DeferredTransport(_Deferred, httpx2.BaseTransport):
    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        return self.transport.handle_request(request)  # type: ignore[no-any-return]

    def close(self) -> None:
        if self._built is not None:
            self._built.close()


class DeferredAsyncTransport(_Deferred, httpx2.AsyncBaseTransport):
    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        return await self.transport.handle_async_request(request)  # type: ignore[no-any-return]

    async def aclose(self) -> None:
        if self._built is not None:
            await self._built.aclose()


NETWORK = (httpx2.HTTPTransport, httpx2.AsyncHTTPTransport, _Deferred)
"""Transports that reach the network: httpx2's own, built or deferred."""


@functools.cache
def deferring(cls: type) -> type:
    """``cls``, an SDK's default httpx2 client class, whose default transport is built at its first request."""
    deferred = DeferredAsyncTransport if issubclass(cls, httpx2.AsyncClient) else DeferredTransport

    def _init_transport(self: Any, *args: Any, **kwargs: Any) -> Any:
        if args or kwargs.get("transport") is not None:  # not httpx2's own call: the class's own answer
            return cls._init_transport(self, *args, **kwargs)
        return deferred(functools.partial(cls._init_transport, weakref.proxy(self), **kwargs))  # no cycle

    namespace = {"_init_transport": _init_transport, "__doc__": cls.__doc__, "__module__": __name__}
    return type(cls.__name__, (cls,), namespace)
