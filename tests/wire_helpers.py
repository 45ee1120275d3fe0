"""Helpers for the third-party wire check (tests/test_wire_tshark.py): a live tshark capture
on loopback, its dissection by tshark into plain dicts, and small UDP endpoints.

Two tshark behaviours shape the capture code (seen with tshark 4.0 on Debian 12):
- "Capturing on 'Loopback: lo'" is printed ~20 ms *before* the capture filter is live, so
  datagrams sent right after it are missed;
- packets still in the kernel ring (TPACKET_V3, delivered in blocks) when tshark is stopped
  are lost.
So tshark streams pcapng to us on stdout and we prove both ends with marker datagrams sent
to a sync socket that the capture filter also matches: capture is live once a marker shows
up, and complete up to the moment the final marker shows up (loopback keeps order).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
from typing import Any

TSHARK_MISSING = ("tshark is not installed (needed for the third-party wire check): "
                  "run .ci/run or apt-get install tshark")

MAX_CAPTURE_SECONDS = 60
_PCAPNG_SHB = 0x0A0D0D0A
_PCAPNG_EPB = 6
_BYTE_ORDER_MAGIC = 0x1A2B3C4D


def tshark_path() -> str | None:
    return shutil.which("tshark")


class PcapngStream:
    """Incremental pcapng reader: keeps every byte and yields packet data per EPB."""

    def __init__(self) -> None:
        self.data = bytearray()
        self._pos = 0
        self._endian = "<"
        self.packets = 0

    def feed(self, chunk: bytes) -> list[bytes]:
        self.data += chunk
        out: list[bytes] = []
        while self._pos + 12 <= len(self.data):
            (block_type,) = struct.unpack_from("<I", self.data, self._pos)
            if block_type == _PCAPNG_SHB:  # byte order is set by each section header
                (magic,) = struct.unpack_from("<I", self.data, self._pos + 8)
                self._endian = "<" if magic == _BYTE_ORDER_MAGIC else ">"
            block_type, length = struct.unpack_from(self._endian + "II", self.data, self._pos)
            if length < 12 or self._pos + length > len(self.data):
                break
            if block_type == _PCAPNG_EPB:
                (captured,) = struct.unpack_from(self._endian + "I", self.data, self._pos + 20)
                start = self._pos + 28
                out.append(bytes(self.data[start:start + captured]))
                self.packets += 1
            self._pos += length
        return out


class Capture:
    """tshark on ``lo`` filtered to ``udp port <port>`` plus our sync port."""

    def __init__(self, proc: asyncio.subprocess.Process, sync: socket.socket,
                 port: int) -> None:
        self.proc = proc
        self.sync = sync
        self.port = port
        self.sync_port: int = sync.getsockname()[1]
        self.stream = PcapngStream()
        self.stderr = bytearray()
        self._seen: set[bytes] = set()
        self._changed = asyncio.Event()
        self._marks = 0
        self._tasks = [asyncio.create_task(self._read_stdout()),
                       asyncio.create_task(self._read_stderr())]

    @classmethod
    async def start(cls, tshark: str, port: int, timeout: float = 20.0) -> Capture:
        sync = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sync.bind(("127.0.0.1", 0))
        sync.setblocking(False)
        sync_port = sync.getsockname()[1]
        # tshark runs dumpcap as a child. Its own session lets abort() stop both, and the
        # autostop bounds a capture left behind if this process dies hard.
        proc = await asyncio.create_subprocess_exec(
            tshark, "-i", "lo", "-f", f"udp port {port} or udp port {sync_port}",
            "-a", f"duration:{MAX_CAPTURE_SECONDS}", "-w", "-", "-q",
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, start_new_session=True)
        capture = cls(proc, sync, port)
        try:
            await capture.mark(timeout)
        except BaseException:
            await capture.abort()
            raise
        return capture

    async def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        while chunk := await self.proc.stdout.read(65536):
            for packet in self.stream.feed(chunk):
                if b"sfu-wire-mark-" in packet:
                    self._seen.add(packet[packet.index(b"sfu-wire-mark-"):])
            self._changed.set()
        self._changed.set()

    async def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        while chunk := await self.proc.stderr.read(4096):
            self.stderr += chunk
            self._changed.set()

    async def mark(self, timeout: float = 10.0) -> None:
        """Send a marker datagram (again every 50 ms) until tshark has captured it: every
        datagram sent on loopback before this call is then in the capture."""
        self._marks += 1
        token = b"sfu-wire-mark-%d" % self._marks
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while token not in self._seen:
            if self.proc.returncode is not None or self._tasks[0].done():
                raise AssertionError(f"tshark stopped (exit {self.proc.returncode}): "
                                     f"{self.stderr.decode(errors='replace')}")
            if loop.time() > deadline:
                raise AssertionError(f"tshark did not capture marker {token!r} within "
                                     f"{timeout} s; stderr: "
                                     f"{self.stderr.decode(errors='replace')}")
            self.sync.sendto(token, ("127.0.0.1", self.sync_port))
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), 0.05)

    async def stop(self, path: str, timeout: float = 10.0) -> None:
        """Fence with a marker, stop tshark (SIGINT, as a user would) and write the pcapng."""
        await self.mark()
        self.proc.send_signal(signal.SIGINT)
        try:
            await asyncio.wait_for(self.proc.wait(), timeout)
            await asyncio.wait_for(asyncio.gather(*self._tasks), timeout)
        finally:
            await self.abort()
        if self.proc.returncode != 0:
            raise AssertionError(f"tshark exited {self.proc.returncode}: "
                                 f"{self.stderr.decode(errors='replace')}")
        with open(path, "wb") as f:
            f.write(self.stream.data)

    async def abort(self) -> None:
        """Stop our tshark and its dumpcap (their process group) if still running; never
        raises. SIGTERM first: a SIGKILLed tshark would leave dumpcap capturing."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if self.proc.returncode is not None:
                break
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, sig)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.proc.wait(), 5)
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        self.sync.close()


# -- reading the capture back with tshark ----------------------------------------------------

FIELDS = (
    "frame.number", "frame.protocols", "_ws.malformed",
    "ip.src", "ip.dst", "ip.checksum.status", "udp.srcport", "udp.dstport", "udp.length",
    "udp.checksum", "udp.checksum.status", "udp.payload",
    "_ws.expert.severity", "_ws.expert.group", "_ws.expert.message",
    "stun.type", "stun.id", "stun.att.type", "stun.att.crc32.status", "stun.att.ipv4",
    "stun.att.port", "stun.att.username",
    "rtp.version", "rtp.ssrc", "rtp.seq", "rtp.timestamp", "rtp.p_type", "rtp.marker",
    "rtp.padding", "rtp.padding.count", "rtp.ext", "rtp.ext.profile", "rtp.ext.rfc5285.id",
    "rtp.cc", "rtp.csrc.item",
    "rtcp.pt", "rtcp.app.name", "rtcp.app.subtype", "rtcp.senderssrc",
    "rtcp.ssrc.identifier", "rtcp.psfb.fmt", "rtcp.mediassrc",
    "rtcp.sdes.type", "rtcp.sdes.text", "rtcp.ssrc.lsr", "rtcp.length_check",
)

# Wireshark's checksum status values (epan/proto.h, proto_checksum_enum_e) and expert
# severities and groups (epan/proto.h PI_*).
CHECKSUM_BAD = "0"
CHECKSUM_GOOD = "1"
SEVERITY_WARN = 0x00600000
GROUP_CHECKSUM = 0x01000000


def heuristics() -> list[str]:
    """Dissect by content: RTP has no fixed port and its UDP heuristic is off by default;
    the RTCP and STUN heuristics are on by default and are listed so the intent is explicit.
    (This is what tshark 4.0 maps the old ``-o rtp.heuristic_rtp:TRUE`` to.)"""
    return ["--enable-heuristic", "rtp_udp", "--enable-heuristic", "rtcp_udp",
            "--enable-heuristic", "stun_udp"]


def decode_as_rtp(port: int) -> list[str]:
    """Dissect the node's port as RTP; its RTP dissector hands RTCP-muxed packets (RFC 5761)
    to RTCP, and the STUN heuristic still runs first."""
    return ["-d", f"udp.port=={port},rtp"]


def dissect(tshark: str, path: str, port: int,
            decode: list[str]) -> list[dict[str, list[str]]]:
    """tshark's dissection of the frames to/from ``port``: one dict per frame, each field a
    list of strings (a field repeats, e.g. rtcp.pt in a compound packet)."""
    args = [tshark, "-r", path, "-n",
            "-o", "ip.check_checksum:TRUE", "-o", "udp.check_checksum:TRUE", *decode,
            "-Y", f"udp.port == {port}", "-T", "json"]
    for name in FIELDS:
        args += ["-e", name]
    result = subprocess.run(args, capture_output=True, timeout=10, check=False,
                            env={**os.environ, "LC_ALL": "C"})
    if result.returncode != 0:
        raise AssertionError(f"tshark -r failed ({result.returncode}): "
                             f"{result.stderr.decode(errors='replace')}")
    frames: list[dict[str, Any]] = json.loads(result.stdout or b"[]")
    return [frame["_source"]["layers"] for frame in frames]


def wire_problems(frames: list[dict[str, list[str]]]) -> list[str]:
    """Every malformed frame, bad IP checksum, STUN FINGERPRINT that is missing or wrong,
    RTCP compound whose lengths do not add up, and tshark expert report of severity warn or
    error, except a bad UDP checksum that is exactly the loopback offload value (see
    udp_pseudo_header_sum)."""
    problems: list[str] = []
    for frame in frames:
        n = one(frame, "frame.number")
        protocols = one(frame, "frame.protocols").split(":")
        # frame.protocols does not list _ws.malformed when a dissector throws; ask for it.
        if "_ws.malformed" in frame or any("malformed" in p for p in protocols):
            problems.append(f"frame {n}: malformed {frame.get('_ws.malformed')} "
                            f"({':'.join(protocols)})")
        if frame.get("ip.checksum.status") != [CHECKSUM_GOOD]:
            problems.append(f"frame {n}: ip checksum status {frame.get('ip.checksum.status')}")
        offload = (frame.get("udp.checksum.status") == [CHECKSUM_BAD] and
                   num(one(frame, "udp.checksum")) == udp_pseudo_header_sum(
                       one(frame, "ip.src"), one(frame, "ip.dst"),
                       num(one(frame, "udp.length"))))
        if not offload and frame.get("udp.checksum.status") != [CHECKSUM_GOOD]:
            problems.append(f"frame {n}: udp checksum {frame.get('udp.checksum')} status "
                            f"{frame.get('udp.checksum.status')}")
        if "stun" in protocols and frame.get("stun.att.crc32.status") != [CHECKSUM_GOOD]:
            problems.append(f"frame {n}: STUN FINGERPRINT status "
                            f"{frame.get('stun.att.crc32.status')}")
        # tshark's own check that the RTCP length fields add up to the datagram size.
        if "rtcp" in protocols and frame.get("rtcp.length_check") != ["1"]:
            problems.append(f"frame {n}: RTCP length check {frame.get('rtcp.length_check')}")
        experts = list(zip(frame.get("_ws.expert.severity", []),
                           frame.get("_ws.expert.group", []),
                           frame.get("_ws.expert.message", []), strict=True))
        for severity, group, message in experts:
            if int(severity) < SEVERITY_WARN:
                continue
            if offload and int(group) == GROUP_CHECKSUM and message.startswith("Bad checksum"):
                continue
            problems.append(f"frame {n}: expert {int(severity):#x}/{int(group):#x}: {message}")
    return problems


def payload(frame: dict[str, list[str]]) -> bytes:
    return bytes.fromhex(one(frame, "udp.payload").replace(":", ""))


def one(frame: dict[str, list[str]], name: str) -> str:
    values = frame.get(name, [])
    assert len(values) == 1, f"frame {frame.get('frame.number')}: {name} = {values}"
    return values[0]


def num(value: str) -> int:
    return int(value, 0)


def udp_pseudo_header_sum(src: str, dst: str, udp_length: int) -> int:
    """The UDP checksum field as the kernel leaves it for checksum offload (CHECKSUM_PARTIAL):
    the folded, uncomplemented sum of the IPv4 pseudo-header. The loopback device never fills
    in the rest, so every datagram captured on ``lo`` carries exactly this value."""
    words = socket.inet_aton(src) + socket.inet_aton(dst)
    total = sum(struct.unpack("!4H", words)) + socket.IPPROTO_UDP + udp_length
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return total


class UdpPeer(asyncio.DatagramProtocol):
    """A loopback UDP endpoint that records every datagram it receives."""

    def __init__(self) -> None:
        self.rx: list[bytes] = []
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.rx.append(data)

    @property
    def port(self) -> int:
        assert self.transport is not None
        return int(self.transport.get_extra_info("sockname")[1])

    def send(self, data: bytes, to: tuple[str, int]) -> None:
        assert self.transport is not None
        self.transport.sendto(data, to)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def open_peer() -> UdpPeer:
    loop = asyncio.get_running_loop()
    _, peer = await loop.create_datagram_endpoint(UdpPeer, local_addr=("127.0.0.1", 0))
    return peer
