"""A fault-injecting HTTP server for tests that speaks the OpenAI and the Anthropic APIs.

Why: retry, timeout and breaker logic around LLM calls is only trustworthy once it
has met real failures (rate limits, hangs, resets, cut streams). ``FaultServer``
speaks enough of the OpenAI HTTP API for the ``openai`` SDK, and of the Anthropic
Messages API for the ``anthropic`` SDK (``base_url=server.url``), answers
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
- ``anthropic_api.py``: the Anthropic dialect: ``/v1/messages`` (JSON and named
  server-sent events up to ``message_stop``), ``/v1/messages/count_tokens``, error bodies.

Plans and the request log go by route name (``"chat"``, ``"embeddings"``,
``"models"``, ``"messages"``, ``"count_tokens"``); a path passed to ``plan()`` or ``requests_to()`` stands for the route
that answers it. Azure's paths share the names of their ``/v1`` counterparts, so
``plan(Fault.status(429))`` meets the next chat request on either.

Another API is another dialect: a module that builds a ``Dialect`` (its routes, error
body, broken answer and mid-stream error event, as ``anthropic_api.py`` does) and one
``register(...)`` line below, which makes every server answer it. ``server.py`` and
``faults.py`` stay as they are: plans and faults work per route name, whatever the API.
(No route checks keys, so ``x-api-key`` and ``Authorization`` need nothing.)
"""

from . import anthropic_api, openai_api
from .dialect import DEFAULT_MODEL, register
from .faults import CutStream, Fault, Hang, Malformed, Ok, Paced, Reset, Stall, Status, StreamError, Trickle
from .openai_api import ROUTES, fake_embedding
from .server import FaultServer, RecordedRequest

register(openai_api.DIALECT)  # the first registered dialect also answers requests no route claims
register(anthropic_api.DIALECT)

__all__ = [
    "CutStream",
    "DEFAULT_MODEL",
    "Fault",
    "FaultServer",
    "Hang",
    "Malformed",
    "Ok",
    "Paced",
    "ROUTES",
    "RecordedRequest",
    "Reset",
    "Stall",
    "Status",
    "StreamError",
    "Trickle",
    "fake_embedding",
]
