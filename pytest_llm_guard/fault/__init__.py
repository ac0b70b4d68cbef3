"""A fault-injecting, OpenAI-compatible HTTP server for tests.

Why: retry, timeout and breaker logic around LLM calls is only trustworthy once it
has met real failures (rate limits, hangs, resets, cut streams). ``FaultServer``
speaks enough of the OpenAI HTTP API for the ``openai`` SDK, answers
deterministically, and lets a test script which failure each request meets::

    with FaultServer() as server:
        server.plan(Fault.status(429, retry_after=0), Fault.status(503))
        client = openai.OpenAI(base_url=server.base_url, api_key="test")
        client.chat.completions.create(model="m", messages=[...])  # 2 failures, then OK

Stdlib only, so it can run anywhere the tests run. One job per module:

- ``faults.py``: the fault values (``Fault.status(503)``, ``Fault.hang()``, ...) and their checks.
- ``server.py``: the HTTP server, the plan, scripted replies, the request log, faults applied.
- ``prefixes.py``: faults chosen by a path prefix (``/hang/v1``, ``/s429-2/v1``), for any client.
- ``command.py``: ``python -m pytest_llm_guard.fault``, the server as a process until Ctrl-C.
- ``http11.py``: reading a request's head off the socket, writing an answer's head.
- ``dialect.py``: what an API dialect gives the server: routes (method + path template
  -> answer builder), its error body, its broken answer; the route table the server
  looks every answer up in.
- ``openai_api.py``: the OpenAI dialect: its routes (``/v1/...`` and Azure OpenAI's
  ``/openai/deployments/<deployment>/...``), chat (JSON and server-sent events),
  embeddings and models answers, error bodies.

Plans and the request log go by route name (``"chat"``, ``"embeddings"``,
``"models"``); a path passed to ``plan()`` or ``requests_to()`` stands for the route
that answers it. Azure's paths share the names of their ``/v1`` counterparts, so
``plan(Fault.status(429))`` meets the next chat request on either.

Another API is another dialect. The Anthropic Messages API, say, would be an
``anthropic_api.py`` that builds a ``Dialect`` with a ``Route("messages", "POST",
"/v1/messages", ...)`` answering its JSON and its ``event:``/``data:`` stream, and its
own error body; one ``register(anthropic_api.DIALECT)`` line below makes every server
answer it. ``server.py`` and ``faults.py`` stay as they are: plans and faults work per
route name, whatever the API. (No route checks keys, so ``x-api-key`` needs nothing.)
"""

from . import openai_api
from .dialect import register
from .faults import CutStream, Fault, Hang, Malformed, Ok, Reset, Status, Trickle
from .openai_api import DEFAULT_MODEL, ROUTES, fake_embedding
from .server import FaultServer, RecordedRequest

register(openai_api.DIALECT)  # the first registered dialect also answers requests no route claims

__all__ = [
    "CutStream",
    "DEFAULT_MODEL",
    "Fault",
    "FaultServer",
    "Hang",
    "Malformed",
    "Ok",
    "ROUTES",
    "RecordedRequest",
    "Reset",
    "Status",
    "Trickle",
    "fake_embedding",
]
