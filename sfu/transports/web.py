"""A tiny HTTP/1.1 server for the browser viewer page (sfu/web/): the page, its script and
style, and ``/config.json`` (where the WebTransport endpoint is, and its certificate hash).

Static files and one JSON document only, so no framework: each connection reads one bounded
request head (8 KiB, with a timeout), answers, and closes (``Connection: close``). Anything
malformed gets a 400 and the connection is closed; nothing a client sends can raise out of
the handler.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["WebServer"]

log = logging.getLogger("sfu.web")

WEB_DIR = Path(__file__).resolve().parent.parent / "web"
MAX_HEAD = 8192
HEAD_TIMEOUT_S = 5.0
WRITE_TIMEOUT_S = 10.0
ROUTES = {
    "/": ("viewer.html", "text/html; charset=utf-8"),
    "/viewer": ("viewer.html", "text/html; charset=utf-8"),
    "/viewer.html": ("viewer.html", "text/html; charset=utf-8"),
    "/viewer.js": ("viewer.js", "text/javascript; charset=utf-8"),
    "/viewer.css": ("viewer.css", "text/css; charset=utf-8"),
}
REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
           408: "Request Timeout", 431: "Request Header Fields Too Large",
           500: "Internal Server Error", 505: "HTTP Version Not Supported"}


class WebServer:
    """Serves the viewer page on ``host:port`` (port 0: an ephemeral one, see ``port``).
    ``config()`` is called for every ``/config.json`` request, so it may change over time
    (e.g. a new certificate hash)."""

    def __init__(self, host: str, port: int, config: Callable[[], dict[str, Any]],
                 root: Path = WEB_DIR, head_timeout: float = HEAD_TIMEOUT_S) -> None:
        self.host = host
        self.head_timeout = head_timeout
        self._port = port
        self.config = config
        self.root = root
        self._server: asyncio.Server | None = None
        self._clients: set[asyncio.Task[None]] = set()
        self.requests = 0
        self.errors = 0  # requests answered 4xx/5xx

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, self._port,
                                                  limit=MAX_HEAD)
        self._port = self._server.sockets[0].getsockname()[1]

    @property
    def port(self) -> int:
        return self._port

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for task in list(self._clients):
            task.cancel()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._clients.add(task)
        try:
            status, headers, body, head_only = await self._respond(reader)
            self.requests += 1
            if status >= 400:
                self.errors += 1
            lines = [f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}",
                     f"Content-Length: {len(body)}", "Cache-Control: no-store",
                     "X-Content-Type-Options: nosniff", "Connection: close", *headers]
            writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
            if not head_only:
                writer.write(body)
            await asyncio.wait_for(writer.drain(), WRITE_TIMEOUT_S)
        except (OSError, TimeoutError, asyncio.IncompleteReadError):
            pass  # the client went away or stalled: nothing to answer
        except asyncio.CancelledError:
            pass
        except Exception:  # never let one request take the server down
            log.exception("web request failed")
        finally:
            if task is not None:
                self._clients.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 1.0)

    async def _respond(self, reader: asyncio.StreamReader
                       ) -> tuple[int, list[str], bytes, bool]:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), self.head_timeout)
        except asyncio.LimitOverrunError:
            return _error(431, "request head over 8 KiB")
        except TimeoutError:
            return _error(408, "request head not received in time")
        except asyncio.IncompleteReadError as exc:
            if not exc.partial:
                raise
            return _error(400, "request head ended early")
        line = head.split(b"\r\n", 1)[0]
        parts = line.split(b" ")
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
            if len(parts) == 3 and parts[2].startswith(b"HTTP/"):
                return _error(505, "only HTTP/1.x is served")
            return _error(400, "malformed request line")
        method, target = parts[0], parts[1]
        if method not in (b"GET", b"HEAD"):
            err = _error(405, "only GET and HEAD are allowed")
            err[1].append("Allow: GET, HEAD")
            return err
        head_only = method == b"HEAD"
        try:
            path = target.decode("ascii").split("?", 1)[0].split("#", 1)[0]
        except UnicodeDecodeError:
            return _error(400, "request target is not ASCII")
        if path == "/config.json":
            body = json.dumps(self.config()).encode()
            return 200, ["Content-Type: application/json"], body, head_only
        route = ROUTES.get(path)
        if route is None:
            return _error(404, f"no such page: {path[:80]}")
        name, ctype = route
        try:
            body = (self.root / name).read_bytes()
        except OSError:
            return _error(404, f"{name} is not installed")
        return 200, [f"Content-Type: {ctype}"], body, head_only


def _error(status: int, text: str) -> tuple[int, list[str], bytes, bool]:
    return status, ["Content-Type: text/plain; charset=utf-8"], (text + "\n").encode(), False
