"""Interop with a third-party RTP stack: GStreamer 1.22 (Debian) against a real node, through
the lossy-link proxy (bench/lossy_link.py), both directions, RTX (RFC 4588) and ULPFEC (RFC 5109).

- downlink: a plain GStreamer sender publishes VP8 to the node over a clean link; two GStreamer
  viewers (rtpbin with rtprtxreceive, rtpjitterbuffer do-retransmission, rtpstorage +
  rtpulpfecdec) each receive it through their own link with 15% loss toward them. One uses the
  node's RTX and ULPFEC, the other ULPFEC only, so the node's ULPFEC must be what GStreamer's
  decoder accepts (in-band: media SSRC, media sequence space, PT 116), not hidden behind RTX.
- uplink: a GStreamer sender with rtprtxsend + rtpulpfecenc publishes through a link with 15%
  loss toward the node; a plain viewer with no recovery of its own then sees what the node made
  of the uplink (NACK → RTX and ULPFEC recovery before fan-out).

The GStreamer peers are tests/gst/gst_peer.py run by the system python (it has gi); they cannot
STUN, so they are bound with participant.connect. Each prints one JSON line of stats at exit.
These tests install nothing: .ci/run installs the Debian packages (see the error text below).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
from typing import Any

from node_helpers import call, datagram_kind, join_bound, run_async, running_node

from bench.lossy_link import LinkProfile, LossyLink
from sfu import _native

SYSTEM_PYTHON = "/usr/bin/python3"
PEER = os.path.join(os.path.dirname(__file__), "gst", "gst_peer.py")
APT = ("apt-get install -y --no-install-recommends gstreamer1.0-tools "
       "gstreamer1.0-plugins-base gstreamer1.0-plugins-good python3-gi "
       "gir1.2-gstreamer-1.0 gir1.2-gst-plugins-base-1.0")
ELEMENTS = ("rtpbin", "rtprtxsend", "rtprtxreceive", "rtpulpfecenc", "rtpulpfecdec",
            "rtpstorage", "rtpjitterbuffer", "rtpvp8pay", "rtpvp8depay", "vp8enc", "vp8dec",
            "videotestsrc", "udpsrc", "udpsink", "funnel")

MEDIA_SSRC = 0x11223344
RTX_SSRC = 0x11223345
PT, RTX_PT, ULPFEC_PT = 96, 97, 116
MEDIA_SECONDS = 6.0  # the sender's run; receivers run a little longer
LOSS = 0.15
PROC_TIMEOUT = 30.0


def check_gstreamer() -> None:
    """Fail (never skip) when the GStreamer side is missing, saying how to install it."""
    probe = ("import gi; gi.require_version('Gst', '1.0'); from gi.repository import Gst; "
             "Gst.init(None); "
             f"missing = [e for e in {ELEMENTS!r} if Gst.ElementFactory.find(e) is None]; "
             "print(Gst.version_string(), missing)")
    try:
        out = subprocess.run([SYSTEM_PYTHON, "-c", probe], capture_output=True, text=True,
                             timeout=30)
    except FileNotFoundError:
        raise AssertionError(f"{SYSTEM_PYTHON} not found; install: {APT}") from None
    assert out.returncode == 0 and out.stdout.strip().endswith("[]"), (
        f"GStreamer with python gi is needed (install: {APT}); got {out.stdout!r} "
        f"{out.stderr[-500:]!r}")


class GstPeer:
    """One tests/gst/gst_peer.py process: started, released with option overrides, reaped."""

    def __init__(self, proc: asyncio.subprocess.Process, local: tuple[str, int],
                 name: str) -> None:
        self.proc = proc
        self.local = local
        self.name = name
        self.result: dict[str, Any] = {}

    @classmethod
    async def start(cls, name: str, mode: str, remote: tuple[str, int],
                    *args: str) -> GstPeer:
        proc = await asyncio.create_subprocess_exec(
            SYSTEM_PYTHON, PEER, mode, "--local", "127.0.0.1:0",
            "--remote", f"{remote[0]}:{remote[1]}", "--wait-stdin", *args,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE)
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), PROC_TIMEOUT)
        ready = json.loads(line)["ready"]
        host, _, port = ready.rpartition(":")
        return cls(proc, (host, int(port)), name)

    def go(self, **overrides: Any) -> None:
        """Build and start the pipeline (with these option overrides)."""
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(overrides) + "\n").encode())

    async def finish(self) -> dict[str, Any]:
        try:
            out, err = await asyncio.wait_for(self.proc.communicate(), PROC_TIMEOUT)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()
            raise AssertionError(f"{self.name}: GStreamer peer did not finish") from None
        lines = [ln for ln in out.decode().splitlines() if ln.startswith("{")]
        assert lines, f"{self.name}: no stats (rc {self.proc.returncode}): {err[-800:]!r}"
        self.result = json.loads(lines[-1])
        assert self.result.get("error") is None, f"{self.name}: {self.result['error']}"
        return self.result

    def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()


async def flow_of(link: LossyLink, client: tuple[str, int]) -> tuple[str, int]:
    """The proxy address the node sees for this client (the proxy opens it on the client's
    first datagram: gst_peer.py sends one RTCP RR when it opens its socket)."""
    for _ in range(500):
        flow = link.upstream_addresses().get(client)
        if flow is not None:
            return flow
        await asyncio.sleep(0.01)
    raise AssertionError(f"the proxy never saw {client}")


def payload_digest(rtp: bytes) -> str:
    """Same as tests/gst/gst_peer.py (which needs gi, so it cannot be imported here)."""
    off = 12 + 4 * (rtp[0] & 0x0F) if len(rtp) >= 12 else len(rtp)
    if len(rtp) >= 12 and rtp[0] & 0x10 and len(rtp) >= off + 4:
        off += 4 + 4 * int.from_bytes(rtp[off + 2:off + 4], "big")
    return hashlib.blake2b(rtp[off:], digest_size=8).hexdigest()


def delivered(sent: dict[str, Any], got: list[str]) -> tuple[int, int]:
    """(distinct sent payloads that arrived byte-exact, arrived payloads never sent)."""
    sent_set = set(sent["media_digests"])
    return len(sent_set.intersection(got)), sum(1 for d in got if d not in sent_set)


def summary(name: str, res: dict[str, Any]) -> str:
    keys = ("media_packets", "frames_decoded", "frames_expected", "rtx_packets",
            "fec_recovered", "fec_unrecovered", "rtx_requests", "jitterbuffer")
    return f"{name}: " + ", ".join(f"{k}={res.get(k)}" for k in keys if k in res)


@run_async
async def test_gstreamer_viewers_recover_from_node_rtx_and_ulpfec() -> None:
    check_gstreamer()
    peers: list[GstPeer] = []
    links: list[LossyLink] = []
    async with running_node() as node:
        try:
            await call(node, "room.create", room="r1")
            await call(node, "participant.join", room="r1", participant="host", role="host")
            sender = await GstPeer.start("sender", "send", node.udp_address,
                                         "--rtx-pt", "-1", "--fec-pt", "-1",
                                         "--ssrc", hex(MEDIA_SSRC))
            peers.append(sender)
            await call(node, "participant.connect", room="r1", participant="host",
                       remote=f"{sender.local[0]}:{sender.local[1]}")
            track = (await call(node, "track.publish", room="r1", participant="host",
                                kind="video", codec="VP8", payload_type=PT,
                                clock_rate=90000,
                                layers=[{"rid": "f", "ssrc": MEDIA_SSRC}]))["track"]
            viewers: dict[str, tuple[GstPeer, LossyLink, dict[str, Any]]] = {}
            for i, recovery in enumerate(({"nack": True, "rtx": True, "fec": "ulpfec"},
                                          {"nack": False, "rtx": False, "fec": "ulpfec"})):
                name = ("rtx+ulpfec", "ulpfec-only")[i]
                pid = f"v{i}"
                await call(node, "participant.join", room="r1", participant=pid,
                           role="audience")
                # loss toward the viewer (media, RTX, FEC); its RTCP goes back clean
                link = await LossyLink.start(
                    target=node.udp_address, up=LinkProfile(delay_ms=10.0),
                    down=LinkProfile.iid(LOSS, delay_ms=10.0), seed=7 + i)
                links.append(link)
                viewer = await GstPeer.start(name, "recv", link.address,
                                             "--seconds", str(MEDIA_SECONDS + 2.5),
                                             "--latency", "300")
                peers.append(viewer)
                flow = await flow_of(link, viewer.local)
                await call(node, "participant.connect", room="r1", participant=pid,
                           remote=f"{flow[0]}:{flow[1]}")
                sub = await call(node, "track.subscribe", room="r1", participant=pid,
                                 track=track, recovery=recovery)
                viewers[name] = (viewer, link, sub)
            for name, (viewer, _, sub) in viewers.items():
                rtx = name == "rtx+ulpfec"
                assert sub["fec"] == "ulpfec", sub
                viewer.go(pt=sub["payload_type"], remote_ssrc=sub["ssrc"],
                          remote_rtx_ssrc=sub["rtx_ssrc"] if rtx else 0,
                          rtx_pt=sub["rtx_payload_type"] if rtx else -1,
                          fec_pt=sub["ulpfec_payload_type"])
            sender.go(seconds=MEDIA_SECONDS)
            sent = await sender.finish()
            results = {name: await v.finish() for name, (v, _, _) in viewers.items()}
            stats = await call(node, "stats.get", room="r1")
        finally:
            for p in peers:
                p.kill()
            for link in links:
                await link.close()
    report = [summary("sender", sent)] + [summary(n, r) for n, r in results.items()]
    report += [f"{n}: intact {delivered(sent, r['media_digests'])}" for n, r in results.items()]
    report += [f"{n} link down: {link.down.line()}" for n, (_, link, _) in viewers.items()]
    report.append(f"node stats: {stats}")
    text = "\n".join(report)
    print(text)
    media = sent["media_packets"]
    assert media > 300, text  # the sender really ran (~100 packets/s)
    for _, link, _ in viewers.values():
        # the link did lose what it was asked to (so recovery below is real)
        assert link.down.dropped_loss >= 0.08 * link.down.sent, text
    both, fec_only = results["rtx+ulpfec"], results["ulpfec-only"]
    intact = {}
    for name, res in results.items():
        intact[name], bogus = delivered(sent, res["media_digests"])
        # whatever GStreamer repaired from the node's RTX/FEC is byte-exact
        assert bogus == 0, f"{name}: {bogus} media payloads that were never sent\n{text}"
    # RTX + ULPFEC: GStreamer's jitterbuffer gets nearly every media packet back
    assert both["rtx_packets"] > 0, text
    assert intact["rtx+ulpfec"] >= 0.97 * media, text
    # ... and decodes the video (frames counted after vp8dec; the expected count comes from
    # the RTP timestamps that reached the depayloader)
    assert both["frames_decoded"] >= 0.8 * both["frames_expected"] > 0, text
    # ULPFEC alone: rtpulpfecdec rebuilt packets from the node's FEC, and the residual loss is
    # well under the link's (XOR FEC cannot repair two losses in a group, so not near zero)
    assert fec_only["fec_recovered"] >= 0.15 * LOSS * media, text
    assert intact["ulpfec-only"] >= (1 - 0.6 * LOSS) * media, text
    assert fec_only.get("rtx_packets", 0) == 0, text


@run_async
async def test_node_recovers_gstreamer_sender_rtx_and_ulpfec() -> None:
    check_gstreamer()
    peers: list[GstPeer] = []
    async with running_node() as node:
        link = await LossyLink.start(target=node.udp_address,
                                     up=LinkProfile.iid(LOSS, delay_ms=10.0),
                                     down=LinkProfile(delay_ms=10.0), seed=11)
        try:
            await call(node, "room.create", room="r1")
            await call(node, "participant.join", room="r1", participant="host", role="host")
            sender = await GstPeer.start("sender", "send", link.address,
                                         "--ssrc", hex(MEDIA_SSRC),
                                         "--rtx-ssrc", hex(RTX_SSRC), "--rtx-pt", str(RTX_PT),
                                         "--fec-pt", str(ULPFEC_PT), "--fec-percentage", "30")
            peers.append(sender)
            flow = await flow_of(link, sender.local)
            await call(node, "participant.connect", room="r1", participant="host",
                       remote=f"{flow[0]}:{flow[1]}")
            track = (await call(node, "track.publish", room="r1", participant="host",
                                kind="video", codec="VP8", payload_type=PT,
                                clock_rate=90000, rtx_payload_type=RTX_PT,
                                ulpfec_payload_type=ULPFEC_PT,
                                layers=[{"rid": "f", "ssrc": MEDIA_SSRC,
                                         "rtx_ssrc": RTX_SSRC}]))["track"]
            # a plain viewer on a clean link, asking for no recovery of its own: what it
            # gets is what the node recovered from the lossy uplink
            viewer = await join_bound(node, "r1", "v0", "audience")
            sub = await call(node, "track.subscribe", room="r1", participant="v0",
                             track=track, recovery={"nack": False, "rtx": False, "fec": "off"})
            sender.go(seconds=MEDIA_SECONDS)
            sent = await sender.finish()
            await link.idle(2.0)
            await asyncio.sleep(0.5)  # the node's last retransmission round
            stats = await call(node, "stats.get", room="r1", participant="host")
        finally:
            for p in peers:
                p.kill()
            await link.close()
    raws = [d for d in viewer.rx if datagram_kind(d) == "rtp"]
    viewer.close()
    parsed = [(_native.parse_rtp(d), d) for d in raws]
    rtp = [p for p, _ in parsed if p["ssrc"] == sub["ssrc"]]
    media_pairs = [(p, d) for p, d in parsed
                   if p["ssrc"] == sub["ssrc"] and p["payload_type"] == sub["payload_type"]]
    media = [p for p, _ in media_pairs]
    media_raw = [d for _, d in media_pairs]
    fec_raw = [d for p, d in parsed if p["ssrc"] == sub["ssrc"] and p["payload_type"] == ULPFEC_PT]
    unique = {p["sequence_number"] for p in media}
    intact, bogus = delivered(sent, [payload_digest(d) for d in media_raw])
    text = (f"{summary('sender', sent)}\nuplink: {link.up.line()}\nviewer: {len(media)} media, "
            f"{len(unique)} distinct, {intact} intact, {bogus} bogus, {len(fec_raw)} ULPFEC "
            f"passed through, payload types "
            f"{sorted({p['payload_type'] for p in rtp})}"
            f"\nnode stats (host): {stats}")
    print(text)
    assert sent["media_packets"] > 300, text
    assert link.up.dropped_loss >= 0.08 * link.up.sent, text
    # the node asked for retransmissions and rtprtxsend answered them on its RTX SSRC
    assert sent["rtx_requests"] > 0 and sent["rtx_packets"] > 0, text
    # after NACK/RTX and ULPFEC recovery the viewer misses almost nothing of the uplink, and
    # what the node rebuilt is byte-exact
    assert bogus == 0, text
    assert intact >= 0.97 * sent["media_packets"], text
    # the node itself repaired the uplink with both tools
    source = stats["tracks"][0]["source"]
    assert source["recovered_rtx"] > 0 and source["recovered_fec"] > 0, text
    # The node passes GStreamer's in-band ULPFEC (PT 116, media SSRC and sequence space) on to
    # a viewer that did not ask for the node's own FEC. Then those packets must be right for
    # that viewer's rewritten sequence numbers (a GStreamer viewer's rtpulpfecdec would use
    # them): the SN base must be rewritten like the media seqs, and each FEC packet must
    # rebuild a packet it protects, exactly, from the others.
    by_seq = {p["sequence_number"]: raw for p, raw in zip(media, media_raw, strict=True)}
    misaddressed = rebuilt_ok = 0
    for raw in fec_raw:
        info = _native.ulpfec_parse(raw)
        prot = [int(q) for q in info["protected"]]  # type: ignore[union-attr]
        if not all(q in by_seq for q in prot):
            misaddressed += 1
            continue
        lost = prot[rebuilt_ok % len(prot)]
        rebuilt = _native.ulpfec_recover(raw, {q: by_seq[q] for q in prot if q != lost},
                                         sub["ssrc"])
        assert rebuilt == by_seq[lost], (f"passed-through ULPFEC (seq {info['sequence_number']}"
                                         f") does not rebuild seq {lost}\n{text}")
        rebuilt_ok += 1
    # a FEC packet may protect one of the few packets the node could not recover
    assert misaddressed <= 0.05 * len(fec_raw), (
        f"{misaddressed} of {len(fec_raw)} passed-through ULPFEC packets protect sequence "
        f"numbers the viewer never got (SN base not rewritten to the viewer's seqs?)\n{text}")
