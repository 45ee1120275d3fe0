"""The browser viewer page (sfu/web/) in real headless Chromium against a real node: a
co-stream with a VP8 + Opus host and an H.264 co-host, a grid layout and comments; the page
decodes all three codecs with WebCodecs, shows the comments and lays out two tiles, and
reports its stats to a local HTTP receiver. A wrong token never yields a session. Also the
page's tiny HTTP server (sfu/transports/web.py) against a raw socket."""

from __future__ import annotations

import asyncio
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from fractions import Fraction
from typing import Any
from urllib.parse import urlencode

import av
import numpy as np
import uvloop
from node_helpers import running_node

from sfu import _native
from sfu.client.h264 import H264Publisher
from sfu.client.publisher import Publisher, random_ssrc
from sfu.transports.web import WebServer

ROOM = "live"
CHROMIUM = "/usr/bin/chromium"
OPUS_PT, OPUS_CLOCK = 111, 48_000


class NodeControl:
    """``await call(method, **params)`` on an in-process node (what the clients expect)."""

    def __init__(self, node: Any) -> None:
        self.node = node

    async def call(self, method: str, **params: Any) -> Any:
        return await self.node.call(method, params)


class OpusSender:
    """Real Opus (libopus, 20 ms mono frames of a tone) on the host's bound socket, as a
    second track of the host: the page must decode it with AudioDecoder."""

    def __init__(self, endpoint: Publisher) -> None:
        self.endpoint = endpoint
        self.ssrc = random_ssrc()
        ctx = av.CodecContext.create("libopus", "w")
        assert isinstance(ctx, av.AudioCodecContext)
        ctx.sample_rate, ctx.layout, ctx.format = OPUS_CLOCK, "mono", "s16"
        ctx.time_base = Fraction(1, OPUS_CLOCK)
        ctx.bit_rate = 32_000
        t = np.arange(OPUS_CLOCK) / OPUS_CLOCK
        pcm = (8000 * np.sin(2 * math.pi * 440 * t)).astype(np.int16)
        self.packets: list[bytes] = []
        for i in range(50):  # one second, looped
            frame = av.AudioFrame.from_ndarray(pcm[None, i * 960:(i + 1) * 960], format="s16",
                                               layout="mono")
            frame.sample_rate, frame.pts = OPUS_CLOCK, i * 960
            self.packets.extend(bytes(p) for p in ctx.encode(frame))
        assert len(self.packets) >= 40
        self.sent = 0

    async def run(self, seconds: float) -> None:
        loop = asyncio.get_running_loop()
        start, seq, ts = loop.time(), random_ssrc() & 0xFFFF, random_ssrc()
        while loop.time() - start < seconds:
            payload = self.packets[self.sent % len(self.packets)]
            self.endpoint.send(_native.build_rtp(OPUS_PT, seq, ts, self.ssrc, payload,
                                                 marker=self.sent == 0))
            self.sent += 1
            seq, ts = (seq + 1) & 0xFFFF, (ts + 960) & 0xFFFF_FFFF
            await asyncio.sleep(max(0.0, start + self.sent * 0.02 - loop.time()))


class ReportSink:
    """A local HTTP server the page POSTs its stats to (the path tells the pages apart)."""

    def __init__(self) -> None:
        self.reports: dict[str, dict[str, Any]] = {}
        self.port = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"

    def get(self, name: str) -> dict[str, Any]:
        return self.reports.get(name, {})

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:  # keep-alive: fetch reuses the connection
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
                lines = head.decode("latin-1").split("\r\n")
                path = lines[0].split(" ")[1]
                size = next((int(v) for k, _, v in (ln.partition(":") for ln in lines[1:])
                             if k.strip().lower() == "content-length"), 0)
                body = await reader.readexactly(size)
                if lines[0].startswith("POST") and body:
                    self.reports[path.strip("/")] = json.loads(body)
                writer.write(b"HTTP/1.1 204 No Content\r\nAccess-Control-Allow-Origin: *\r\n"
                             b"Content-Length: 0\r\n\r\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, TimeoutError, ConnectionError, ValueError,
                IndexError):
            pass
        finally:
            writer.close()

    def close(self) -> None:
        if self._server is not None:
            self._server.close()


class Chromium:
    """Headless Chromium on one page, in its own process group (killed as a whole)."""

    def __init__(self, url: str, tmp: str, name: str) -> None:
        if not os.path.exists(CHROMIUM) and shutil.which("chromium") is None:
            raise AssertionError("Chromium is missing: the browser viewer test needs it "
                                 "(apt-get install chromium)")
        profile = os.path.join(tmp, f"profile-{name}")
        self.log_path = os.path.join(tmp, f"chromium-{name}.log")
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [CHROMIUM if os.path.exists(CHROMIUM) else "chromium", "--headless=new",
                 "--no-sandbox", "--disable-gpu", f"--user-data-dir={profile}",
                 "--remote-debugging-port=0", "--no-first-run", "--mute-audio",
                 "--enable-logging=stderr", "--v=0", url],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)

    def console(self) -> str:
        """The page's console lines (for failure messages)."""
        try:
            with open(self.log_path, errors="replace") as f:
                return "\n".join(ln for ln in f.read().splitlines() if "CONSOLE" in ln)[-3000:]
        except OSError:
            return ""

    def kill(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            pass


async def wait_for(pred: Callable[[], bool], timeout: float, what: Callable[[], str]) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out: {what()}")
        await asyncio.sleep(0.1)


async def vp8_host(ctl: NodeControl) -> tuple[Publisher, OpusSender]:
    """The host: VP8 video (Publisher) and Opus audio on the same bound socket."""
    host = await Publisher.join(ctl, ROOM, "host", width=320, height=180, fps=30,
                                bitrate=300_000, keyframe_interval=60)
    audio = OpusSender(host)
    await ctl.call("track.publish", room=ROOM, participant="host", kind="audio",
                   codec="opus", payload_type=OPUS_PT, clock_rate=OPUS_CLOCK,
                   layers=[{"rid": "a", "ssrc": audio.ssrc}])
    return host, audio


async def scenario(node: Any, page: str) -> None:
    """Everything but where the page is served: ``page`` is the viewer page's URL."""
    ctl = NodeControl(node)
    await ctl.call("room.create", room=ROOM, auto_subscribe=True)
    host, audio = await vp8_host(ctl)
    tasks = [asyncio.create_task(host.run(seconds=45.0)),
             asyncio.create_task(audio.run(45.0))]
    viewer = await ctl.call("participant.join", room=ROOM, participant="fan",
                            role="audience")
    sink = ReportSink()
    await sink.start()
    browsers: list[Chromium] = []
    guest: H264Publisher | None = None
    with tempfile.TemporaryDirectory(prefix="sfu-chromium-") as tmp:
        try:
            good = page + "?" + urlencode({"room": ROOM, "participant": "fan",
                                           "token": viewer["token"], "report": sink.url("good")})
            bad = page + "?" + urlencode({"room": ROOM, "participant": "fan",
                                          "token": "0" * len(viewer["token"]),
                                          "report": sink.url("bad")})
            browsers.append(Chromium(good, tmp, "good"))
            browsers.append(Chromium(bad, tmp, "bad"))

            def report(name: str) -> Callable[[], str]:
                return lambda: (f"page stats {json.dumps(sink.get(name))[:1500]}\n"
                                f"console:\n{browsers[0].console()}")
            await wait_for(lambda: sink.get("good").get("connected") is True, 20,
                           report("good"))
            # A wrong token: the page says why and never gets a session.
            await wait_for(lambda: bool(sink.get("bad").get("errors")), 15, report("bad"))
            assert sink.get("bad")["connected"] is False
            browsers[1].kill()
            # The guest comes on stage while the page watches: its STATE and the new
            # layout reach the page over the session.
            await ctl.call("costream.set_layout", room=ROOM, mode="grid")
            guest = await H264Publisher.join_h264(ctl, ROOM, "guest", role="cohost",
                                                  width=320, height=180, fps=30,
                                                  bitrate=300_000, keyframe_interval=60)
            tasks.append(asyncio.create_task(guest.run(seconds=40.0)))
            comments = ["hello from the test", "二つ目のコメント", "third <b>not bold</b>"]
            for text in comments:
                await ctl.call("data.send", room=ROOM, kind="comment", text=text,
                               **{"from": "viewer9"})
                await asyncio.sleep(0.3)

            def done() -> bool:
                s = sink.get("good")
                decoded = s.get("framesDecoded", {})
                return (decoded.get("vp8", 0) >= 10 and decoded.get("h264", 0) >= 10
                        and s.get("audioFrames", 0) >= 10
                        and all(c in s.get("comments", []) for c in comments)
                        and len(s.get("layout", {}).get("slots", [])) == 2)
            await wait_for(done, 30, report("good"))
            stats = sink.get("good")
            assert stats["connected"] is True
            layout = stats["layout"]
            assert layout["mode"] == "grid"
            assert [(s["participant"], s["w"], s["h"]) for s in layout["slots"]] == [
                ("host", 0.5, 1), ("guest", 0.5, 1)]
            # Each tile drew its participant's pictures (the test pattern, not black).
            for who in ("host", "guest"):
                tile = stats["tiles"][who]
                assert tile["placed"] and tile["visible"], tile
                assert (tile["width"], tile["height"]) == (320, 180), tile
                assert tile["drawn"] >= 10 and 60 < tile["luma"] < 200, tile
            assert not stats["errors"], stats["errors"]
            # Chromium's own QUIC stack: its ACK-only packets pass the node's native filter
            # (authenticated and dropped without aioquic), and the engine sealed the media.
            quic = node.quic
            assert quic is not None and quic.counters["quic_acks_filtered"] > 0, quic.counters
            sealed = int(node.engine.counters[_native.COUNTER_NAMES.index("quic_sealed")])
            assert sealed > 0
        finally:
            for b in browsers:
                b.kill()
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            host.close()
            if guest is not None:
                guest.close()
            sink.close()


def test_viewer_page_in_headless_chromium_decodes_the_costream() -> None:
    async def main() -> None:
        async with running_node(quic_port=0, http_port=0) as running:
            node = running.node
            assert node.web is not None and node.quic is not None
            assert node.web_config()["cert_sha256"] == node.cert_sha256.hex()
            await scenario(node, f"http://127.0.0.1:{node.web.port}/viewer")
            # The node refused the wrong token and opened exactly one session (the good one).
            assert node.quic.counters["quic_auth_failed"] >= 1
            assert node.quic.counters["quic_sessions"] == 1
    uvloop.run(asyncio.wait_for(main(), 75))


# -- the page's HTTP server against a raw socket ---------------------------------------------

@asynccontextmanager
async def web_server(head_timeout: float = 1.0) -> AsyncIterator[WebServer]:
    config = {"webtransport": "https://127.0.0.1:4433/sfu", "cert_sha256": "ab" * 32}
    server = WebServer("127.0.0.1", 0, lambda: config, head_timeout=head_timeout)
    await server.start()
    try:
        yield server
    finally:
        server.close()


async def raw(port: int, data: bytes, *, half_close: bool = True) -> bytes:
    """Send ``data`` on a fresh connection and read the answer until the server closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        if half_close and writer.can_write_eof():
            writer.write_eof()
        return await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def headers_of(answer: bytes) -> dict[str, str]:
    head = answer.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")[1:]
    return {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in head)}


def test_web_server_routes_types_and_errors() -> None:
    async def main() -> None:
        async with web_server() as server:
            port = server.port
            for path, ctype, marker in (("/", "text/html", b"viewer.js"),
                                        ("/viewer?room=r", "text/html", b"<title>"),
                                        ("/viewer.js", "text/javascript", b"WebTransport"),
                                        ("/viewer.css", "text/css", b".tile")):
                answer = await raw(port, f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
                h = headers_of(answer)
                assert status_of(answer) == 200, (path, answer[:200])
                assert h["content-type"].startswith(ctype) and h["cache-control"] == "no-store"
                body = answer.split(b"\r\n\r\n", 1)[1]
                assert marker in body and int(h["content-length"]) == len(body)
            answer = await raw(port, b"GET /config.json HTTP/1.1\r\n\r\n")
            assert headers_of(answer)["content-type"] == "application/json"
            assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["cert_sha256"] == "ab" * 32
            answer = await raw(port, b"HEAD /viewer.js HTTP/1.1\r\n\r\n")
            assert status_of(answer) == 200 and answer.endswith(b"\r\n\r\n")
            assert int(headers_of(answer)["content-length"]) > 1000
            assert status_of(await raw(port, b"GET /../../etc/passwd HTTP/1.1\r\n\r\n")) == 404
            assert status_of(await raw(port, b"GET /nope HTTP/1.0\r\n\r\n")) == 404
            answer = await raw(port, b"POST / HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi")
            assert status_of(answer) == 405 and headers_of(answer)["allow"] == "GET, HEAD"
            assert status_of(await raw(port, b"GET / HTTP/2.0\r\n\r\n")) == 505
            assert server.requests == 10 and server.errors == 4
    uvloop.run(asyncio.wait_for(main(), 20))


def test_web_server_survives_garbage() -> None:
    async def main() -> None:
        async with web_server(head_timeout=0.5) as server:
            port = server.port
            assert status_of(await raw(port, os.urandom(300) + b"\r\n\r\n")) == 400
            assert status_of(await raw(port, b"GET\r\n\r\n")) == 400
            assert status_of(await raw(port, b"GET /\xff\xfe HTTP/1.1\r\n\r\n")) == 400
            assert status_of(await raw(port, b"GET / HTTP/1.1\r\nX: " + b"a" * 9000)) == 431
            assert status_of(await raw(port, b"GET / HTTP/1.1\r\n")) == 400  # ends early
            assert await raw(port, b"") == b""  # connect and close: nothing to answer
            # A client that sends half a head and stalls gets a 408 after the timeout.
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET / HTTP/1.1\r\n")
            answer = await asyncio.wait_for(reader.read(), 5)
            writer.close()
            assert status_of(answer) == 408
            # Many connections at once, some abandoned mid-request: the server still serves.
            socks = []
            for _ in range(50):
                s = socket.create_connection(("127.0.0.1", port))
                s.sendall(b"GET /viewer.js HTTP/1.1\r\n")
                socks.append(s)
            for s in socks[::2]:
                s.close()
            assert status_of(await raw(port, b"GET /config.json HTTP/1.1\r\n\r\n")) == 200
            for s in socks[1::2]:
                s.close()
    uvloop.run(asyncio.wait_for(main(), 20))
