"""The web server's application (granian --interface asgi configstore.asgi:application).

Slow or waiting clients must not exhaust a node, so no client holds a thread or a database
connection while it is slow or waiting:

- granian reads request headers in Rust, asynchronously, and closes a connection whose
  headers are not complete within --http1-header-read-timeout (runcluster and
  docker-compose.yml give 10 s);
- this front end reads the whole body on the event loop before any thread sees the request:
  over CONFIGSTORE_MAX_REQUEST_BYTES (Django's DATA_UPLOAD_MAX_MEMORY_SIZE) it answers 413,
  and a body not complete within CONFIGSTORE_BODY_TIMEOUT_MS (10 s) answers 408 and closes
  the connection. A chunked body is read the same way and handed to Django with its length;
- Django (its WSGI application, unchanged) then runs in a bounded pool of
  CONFIGSTORE_WEB_THREADS threads (a2wsgi's WSGIMiddleware);
- a long-poll (a GET with ?wait_index= or the watch endpoint) that finds nothing new answers
  a *parked* response (configstore.watch) instead of waiting in its thread: the front end
  awaits the change on the event loop (configstore.watch.wait_parked: no thread, no database
  connection, woken only when a slot touches its key or prefix), then runs the request
  again with the time left. A client that hangs up ends its wait.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import threading
import time

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "configstore.settings")

# Sets Django up (the imports below need its apps) and, with DEBUG off, refuses to start
# with a development secret.
from configstore.wsgi import application as _django  # noqa: E402

# isort: split
from a2wsgi import WSGIMiddleware  # noqa: E402
from django.conf import settings  # noqa: E402

from configstore import conf, watch  # noqa: E402

_PARK_HEADER = watch.PARK_HEADER.lower().encode()
_PARK_TIMEOUT_HEADER = b"x-configstore-park-timeout"


class BodyRejected(Exception):
    """The request body was refused before Django saw it: answer `status` and close."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail = status, code, detail


class ClientGone(Exception):
    """The client disconnected before the body was complete."""


async def _json_error(send, status: int, code: str, detail: str) -> None:
    body = json.dumps({"error": code, "detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class FrontEnd:
    """ASGI application: the body read on the loop, Django in a bounded thread pool,
    long-polls parked on the loop (see the module docstring)."""

    def __init__(self, wsgi_app, *, threads: int, body_timeout: float, max_body: int) -> None:
        self.pool = WSGIMiddleware(wsgi_app, workers=threads)
        self.body_timeout = body_timeout
        self.max_body = max_body

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.pool(scope, receive, send)  # lifespan: a2wsgi answers it
            return
        try:
            body = await asyncio.wait_for(self._read_body(scope, receive), self.body_timeout)
        except TimeoutError:
            await _json_error(
                send,
                408,
                "request_timeout",
                f"the request body did not arrive within {self.body_timeout:g} s",
            )
            return
        except BodyRejected as rejected:
            await _json_error(send, rejected.status, rejected.code, rejected.detail)
            return
        except ClientGone:
            return
        scope = dict(scope, headers=_with_length(scope["headers"], len(body)))
        if scope["method"] not in ("GET", "HEAD"):  # only reads wait
            await self._run(scope, body, send)
            return
        await self._long_poll(scope, body, receive, send)

    async def _read_body(self, scope, receive) -> bytes:
        declared = _content_length(scope["headers"])
        if declared is not None and declared > self.max_body:
            raise BodyRejected(413, "too_large", f"the request body is over {self.max_body} bytes")
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ClientGone
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                raise BodyRejected(
                    413, "too_large", f"the request body is over {self.max_body} bytes"
                )
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def _run(self, scope, body: bytes, send) -> None:
        given = False

        async def replay():
            nonlocal given
            if not given:
                given = True
                return {"type": "http.request", "body": body, "more_body": False}
            return {"type": "http.disconnect"}

        await self.pool(scope, replay, send)

    async def _long_poll(self, scope, body: bytes, receive, send) -> None:
        """Run a GET (or HEAD); while it answers parked, await its wait and run it again."""
        scope = dict(scope, **{watch.PARK_SCOPE_KEY: None})
        deadline: float | None = None
        gone = asyncio.ensure_future(_disconnected(receive))
        try:
            while True:
                parked: list[tuple[watch.Wait, float]] = []

                async def intercept(message, parked=parked):
                    if message["type"] == "http.response.start":
                        headers = dict(message.get("headers", []))
                        if _PARK_HEADER in headers:
                            wait = watch.Wait.from_json(headers[_PARK_HEADER].decode())
                            parked.append((wait, float(headers[_PARK_TIMEOUT_HEADER])))
                            return
                    if parked:
                        return  # the parked response's body: never sent
                    await send(message)

                await self._run(scope, body, intercept)
                if not parked:
                    return
                wait, timeout = parked[0]
                if deadline is None:
                    deadline = time.monotonic() + timeout
                    scope["query_string"] = wait.pinned(scope["query_string"])
                left = max(deadline - time.monotonic(), 0.0)
                waiting = asyncio.ensure_future(watch.wait_parked(wait, left))
                await asyncio.wait({waiting, gone}, return_when=asyncio.FIRST_COMPLETED)
                if gone.done():
                    waiting.cancel()
                    return
                scope[watch.PARK_SCOPE_KEY] = max(deadline - time.monotonic(), 0.0)
        finally:
            gone.cancel()


async def _disconnected(receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


def _content_length(headers) -> int | None:
    for name, value in headers:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                raise BodyRejected(400, "invalid", "Content-Length is not a number") from None
    return None


def _with_length(headers, length: int) -> list:
    """The headers Django sees: the body is read whole, so it has a length and no chunks."""
    kept = [(n, v) for n, v in headers if n not in (b"content-length", b"transfer-encoding")]
    if length:
        kept.append((b"content-length", str(length).encode()))
    return kept


def exit_with_server() -> None:
    """A server's worker process ends with the server: granian's worker would otherwise
    outlive a SIGKILLed master and keep serving the port, so that a restarted node's new
    web server could not take it. No-op where no multiprocessing parent started us."""
    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def watch() -> None:
        parent.join()  # returns when the parent is gone
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-server", daemon=True).start()


exit_with_server()
application = FrontEnd(
    _django,
    threads=conf.store().web_threads,
    body_timeout=conf.store().body_timeout,
    max_body=settings.DATA_UPLOAD_MAX_MEMORY_SIZE,
)
