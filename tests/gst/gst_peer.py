"""A GStreamer 1.22 RTP peer with RTX (RFC 4588) and ULPFEC (RFC 5109) for interop tests.

Run with the SYSTEM python (/usr/bin/python3: it has gi); the project venv has no gi.

    send: videotestsrc → vp8enc → rtpvp8pay → rtpbin [rtpulpfecenc → rtprtxsend] → udp
    recv: udp → rtpbin [rtprtxreceive → rtpstorage → rtpjitterbuffer → rtpptdemux
          → rtpulpfecdec] → rtpvp8depay → vp8dec → fakesink (frames counted)

One UDP socket per peer carries RTP and RTCP both ways (RFC 5761 mux, as the node does): rtpbin's
RTP and RTCP source pads go through a funnel into one udpsink, and the udpsrc feeds
recv_rtp_sink, where rtpsession itself separates muxed RTCP (PT 200..204) from RTP.

Protocol with a driving test (stdout, one JSON object per line): {"ready": "host:port"} once the
socket is bound (with --remote, one empty RTCP RR has already gone out, so a NAT-style proxy knows
the flow); with --wait-stdin it then waits for one stdin line, a JSON object of option overrides
(e.g. {"remote_ssrc": ..., "fec_pt": 116}), builds the pipeline and runs --seconds; at exit
(also on SIGTERM/SIGINT) it prints ONE JSON line of statistics: send: media_packets, rtx_requests,
rtx_packets, fec_protected; recv: media_packets (reaching the depayloader, after every
recovery), frames_decoded, frames_expected (from RTP timestamps), jitterbuffer stats,
rtx_packets (rtprtxreceive), fec_recovered/fec_unrecovered (rtpulpfecdec).

GStreamer's ULPFEC is in-band: FEC packets share the media SSRC and sequence space (PT 116, right
after the packets they protect); rtpulpfecdec finds them in rtpstorage on a packet-lost event.
The pitfalls that make recovery work are commented where they are handled: rtpstorage
size-time, rtpptdemux ignored-payload-types, rtpsession's RTCP budget.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import signal
import sys
import time
from typing import Any

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstNet", "1.0")
from gi.repository import Gio, GLib, Gst, GstNet  # noqa: E402

VIDEO_CLOCK = 90000
VP8_CAPS = "application/x-rtp,media=video,clock-rate=90000,encoding-name=VP8"


def _hostport(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


def _pt_map(pairs: dict[int, int]) -> Gst.Structure:
    # rtprtx* read guint fields; a Python int would be stored as gint, so go through a string
    return Gst.Structure.from_string(
        "application/x-rtp-pt-map," + ",".join(f"{k}=(uint){v}" for k, v in pairs.items()))[0]


def _ssrc_map(pairs: dict[int, int]) -> Gst.Structure:
    return Gst.Structure.from_string(
        "application/x-rtp-ssrc-map," + ",".join(f"{k}=(uint){v}" for k, v in pairs.items()))[0]


class Peer:
    """Common part: the pipeline, the shared UDP socket, the main loop and the stats."""

    def __init__(self, args: argparse.Namespace, gsock: Gio.Socket) -> None:
        self.args = args
        self.pipeline = Gst.Pipeline.new("peer")
        self.loop = GLib.MainLoop()
        self.error: str | None = None
        self.gsock = gsock
        self.local = gsock.get_local_address()
        self.remote: tuple[str, int] | None = _hostport(args.remote) if args.remote else None
        self.rtpbin = Gst.ElementFactory.make("rtpbin", "rtpbin")
        self.rtpbin.set_property("rtp-profile", 3)  # AVPF: early feedback (NACK, PLI)
        self.pipeline.add(self.rtpbin)
        # both directions of the one socket
        self.udpsrc = Gst.ElementFactory.make("udpsrc", "udpsrc")
        self.udpsrc.set_property("socket", self.gsock)
        self.udpsrc.set_property("close-socket", False)
        self.udpsrc.set_property("buffer-size", 1 << 20)
        self.udpsink = Gst.ElementFactory.make("udpsink", "udpsink")
        self.udpsink.set_property("socket", self.gsock)
        self.udpsink.set_property("close-socket", False)
        self.udpsink.set_property("sync", False)
        self.udpsink.set_property("async", False)
        if self.remote:
            self.udpsink.set_property("host", self.remote[0])
            self.udpsink.set_property("port", self.remote[1])
        else:
            self.udpsink.set_property("host", "0.0.0.0")  # filled by _learn_remote
            self.udpsink.set_property("port", 9)
        self.funnel = Gst.ElementFactory.make("funnel", "out")
        for e in (self.udpsrc, self.udpsink, self.funnel):
            self.pipeline.add(e)
        self.funnel.link(self.udpsink)
        self.rtpbin.link_pads("send_rtcp_src_0", self.funnel, "sink_%u")
        bus = self.pipeline.get_bus()
        bus.add_signal_watch()
        bus.connect("message::error", self._on_error)
        bus.connect("message::eos", lambda *_: self.loop.quit())
        if not self.remote:
            self.udpsrc.get_static_pad("src").add_probe(Gst.PadProbeType.BUFFER,
                                                       self._learn_remote)

    def tune_session(self) -> None:
        """RTCP budget. rtpsession's defaults (5% of an assumed 64 kbit/s, regular reports
        >= 5 s apart) hold AVPF early feedback to a few compound packets per second, so NACKs
        queue up and miss the playout deadline; give RTCP a fixed 20 kB/s and report every
        0.5 s, which the node's recovery policy wants anyway."""
        session = self.rtpbin.emit("get-session", 0)
        session.set_property("rtcp-fraction", 20000.0)
        session.set_property("rtcp-min-interval", 500 * Gst.MSECOND)

    def _learn_remote(self, pad: Gst.Pad, info: Gst.PadProbeInfo) -> Gst.PadProbeReturn:
        """Symmetric RTP: answer (RTCP) to whoever sent us the first datagram."""
        meta = GstNet.buffer_get_net_address_meta(info.get_buffer())
        if meta is not None and self.remote is None:
            addr = meta.addr
            self.remote = (addr.get_address().to_string(), addr.get_port())
            self.udpsink.emit("clear")
            self.udpsink.emit("add", self.remote[0], self.remote[1])
            return Gst.PadProbeReturn.REMOVE
        return Gst.PadProbeReturn.OK

    def _on_error(self, bus: Gst.Bus, msg: Gst.Message) -> None:
        err, dbg = msg.parse_error()
        self.error = f"{err.message} ({dbg})"
        self.loop.quit()

    def run(self) -> dict[str, Any]:
        t0 = time.monotonic()
        if self.pipeline.set_state(Gst.State.PLAYING) == Gst.StateChangeReturn.FAILURE:
            self.error = self.error or "pipeline failed to start"
            return self.stats()
        for sig in (signal.SIGTERM, signal.SIGINT):
            GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, sig, self._quit)
        GLib.timeout_add(int(self.args.seconds * 1000), self._quit)
        self.loop.run()
        out = self.stats()
        out["elapsed_s"] = round(time.monotonic() - t0, 3)
        self.pipeline.set_state(Gst.State.NULL)
        return out

    def _quit(self) -> bool:
        self.loop.quit()
        return False

    def stats(self) -> dict[str, Any]:
        return {"error": self.error, "local": f"{self.local.get_address().to_string()}:"
                f"{self.local.get_port()}",
                "remote": f"{self.remote[0]}:{self.remote[1]}" if self.remote else None}


class Sender(Peer):
    """Live VP8 test pattern; RTX on --rtx-ssrc/--rtx-pt and in-band ULPFEC on --fec-pt."""

    def __init__(self, args: argparse.Namespace, gsock: Gio.Socket) -> None:
        super().__init__(args, gsock)
        a = args
        desc = (f"videotestsrc is-live=true pattern=smpte horizontal-speed=4 "
                f"! video/x-raw,width={a.width},height={a.height},framerate={a.fps}/1 "
                f"! vp8enc deadline=1 cpu-used=8 "
                f"target-bitrate={a.bitrate} keyframe-max-dist={a.gop} error-resilient=1 "
                f"! rtpvp8pay name=pay pt={a.pt} ssrc={a.ssrc} mtu=1200 picture-id-mode=15-bit")
        self.src = Gst.parse_bin_from_description(desc, True)
        self.pipeline.add(self.src)
        self.rtx: Gst.Element | None = None
        self.fec: Gst.Element | None = None
        self.rtpbin.connect("request-aux-sender", self._aux_sender)
        self.rtpbin.connect("request-fec-encoder", self._fec_encoder)
        self.media_packets = 0
        self.digests: list[str] = []  # of each media packet's RTP payload, in send order
        self.src.get_by_name("pay").get_static_pad("src").add_probe(
            Gst.PadProbeType.BUFFER | Gst.PadProbeType.BUFFER_LIST, self._on_media)
        self.src.link_pads("src", self.rtpbin, "send_rtp_sink_0")
        self.rtpbin.link_pads("send_rtp_src_0", self.funnel, "sink_%u")
        self.udpsrc.link_pads("src", self.rtpbin, "recv_rtcp_sink_0")
        self.tune_session()

    def _on_media(self, pad: Gst.Pad, info: Gst.PadProbeInfo) -> Gst.PadProbeReturn:
        # rtpvp8pay pushes buffer lists (one per frame)
        lst = info.get_buffer_list()
        bufs = [lst.get(i) for i in range(lst.length())] if lst is not None \
            else [info.get_buffer()]
        for buf in bufs:
            self.media_packets += 1
            self.digests.append(payload_digest(_buffer_bytes(buf)))
        return Gst.PadProbeReturn.OK

    def _aux_sender(self, rtpbin: Gst.Element, session: int) -> Gst.Element | None:
        if self.args.rtx_pt < 0:
            return None
        bin_ = Gst.Bin.new(f"rtxsend{session}")
        self.rtx = Gst.ElementFactory.make("rtprtxsend")
        self.rtx.set_property("payload-type-map", _pt_map({self.args.pt: self.args.rtx_pt}))
        self.rtx.set_property("ssrc-map", _ssrc_map({self.args.ssrc: self.args.rtx_ssrc}))
        self.rtx.set_property("max-size-time", 2000)
        bin_.add(self.rtx)
        bin_.add_pad(Gst.GhostPad.new(f"sink_{session}", self.rtx.get_static_pad("sink")))
        bin_.add_pad(Gst.GhostPad.new(f"src_{session}", self.rtx.get_static_pad("src")))
        return bin_

    def _fec_encoder(self, rtpbin: Gst.Element, session: int) -> Gst.Element | None:
        if self.args.fec_pt < 0:
            return None
        self.fec = Gst.ElementFactory.make("rtpulpfecenc")
        self.fec.set_property("pt", self.args.fec_pt)
        self.fec.set_property("percentage", self.args.fec_percentage)
        self.fec.set_property("multipacket", True)
        return self.fec

    def stats(self) -> dict[str, Any]:
        out = super().stats()
        out["mode"] = "send"
        out["media_packets"] = self.media_packets
        out["media_digests"] = self.digests
        pay = self.src.get_by_name("pay")
        if pay is not None:
            st = pay.get_property("stats")
            out["rtp_seqnum"] = st.get_value("seqnum") if st else None
        if self.rtx is not None:
            out["rtx_requests"] = self.rtx.get_property("num-rtx-requests")
            out["rtx_packets"] = self.rtx.get_property("num-rtx-packets")
        if self.fec is not None:
            out["fec_protected"] = self.fec.get_property("protected")
        return out


class Receiver(Peer):
    """Receives one VP8 stream with NACK/RTX and ULPFEC recovery and counts what survives."""

    def __init__(self, args: argparse.Namespace, gsock: Gio.Socket) -> None:
        super().__init__(args, gsock)
        a = args
        self.rtpbin.set_property("latency", a.latency)
        self.rtpbin.set_property("do-retransmission", a.rtx_pt >= 0)
        self.rtpbin.set_property("do-lost", True)  # lost events drive rtpulpfecdec
        self.rtx: Gst.Element | None = None
        self.fecs: list[Gst.Element] = []  # rtpbin asks one decoder per (ssrc, pt) stream
        self.jbufs: list[Gst.Element] = []
        self.frames_decoded = 0
        self.depay_frames = 0
        self.media_packets = 0  # media packets that reached the depayloader, after recovery
        self.digests: list[str] = []  # of their RTP payloads (repairs must be byte-exact)
        self.rtp_ts: set[int] = set()
        self.media_ssrc: int | None = None
        self.linked = False
        self.rtpbin.connect("request-pt-map", self._pt_map)
        self.rtpbin.connect("request-aux-receiver", self._aux_receiver)
        self.rtpbin.connect("request-fec-decoder", self._fec_decoder)
        self.rtpbin.connect("new-jitterbuffer", self._new_jbuf)
        self.rtpbin.connect("pad-added", self._pad_added)
        self.rtpbin.connect("deep-element-added", self._element_added)
        self.udpsrc.set_property("caps", Gst.Caps.from_string(
            f"{VP8_CAPS},payload={a.pt}"))
        self.udpsrc.link_pads("src", self.rtpbin, "recv_rtp_sink_0")
        # rtpstorage keeps nothing by default (size-time 0): ULPFEC needs the packets around
        # a loss for as long as the jitterbuffer may still declare one lost
        self.tune_session()
        self.rtpbin.emit("get-storage", 0).set_property(
            "size-time", (a.latency + 200) * Gst.MSECOND)
        # the receiver also sends RTCP (RR, NACK, PLI) from its own SSRC
        self.rtpbin.emit("get-internal-session", 0).set_property("internal-ssrc", a.ssrc)

    def _element_added(self, bin_: Gst.Bin, sub: Gst.Bin, element: Gst.Element) -> None:
        # FEC packets must not get their own rtpptdemux pad: ptdemux sends the jitterbuffer's
        # packet-lost events to the pad of the last payload type seen, and rtpulpfecdec pushes
        # a recovered packet out of the pad that got the event; with a pad for the FEC PT the
        # recovered media ends up in the FEC branch. rtpulpfecdec reads FEC from rtpstorage
        # (before the jitterbuffer), so dropping them at ptdemux loses nothing.
        factory = element.get_factory()
        if factory is not None and factory.get_name() == "rtpptdemux" and self.args.fec_pt >= 0:
            Gst.util_set_object_arg(element, "ignored-payload-types", f"<{self.args.fec_pt}>")

    def _pt_map(self, rtpbin: Gst.Element, session: int, pt: int) -> Gst.Caps | None:
        a = self.args
        if pt == a.pt:
            return Gst.Caps.from_string(f"{VP8_CAPS},payload={pt}")
        if pt == a.rtx_pt:
            return Gst.Caps.from_string(
                f"application/x-rtp,media=video,clock-rate=90000,encoding-name=RTX,"
                f"payload={pt},apt={a.pt}")
        if pt == a.fec_pt:
            return Gst.Caps.from_string(
                f"application/x-rtp,media=video,clock-rate=90000,encoding-name=ULPFEC,"
                f"payload={pt}")
        return None

    def _aux_receiver(self, rtpbin: Gst.Element, session: int) -> Gst.Element | None:
        if self.args.rtx_pt < 0:
            return None
        bin_ = Gst.Bin.new(f"rtxrecv{session}")
        self.rtx = Gst.ElementFactory.make("rtprtxreceive")
        self.rtx.set_property("payload-type-map", _pt_map({self.args.pt: self.args.rtx_pt}))
        if self.args.remote_ssrc and self.args.remote_rtx_ssrc:
            self.rtx.set_property("ssrc-map", _ssrc_map(
                {self.args.remote_ssrc: self.args.remote_rtx_ssrc}))
        bin_.add(self.rtx)
        bin_.add_pad(Gst.GhostPad.new(f"sink_{session}", self.rtx.get_static_pad("sink")))
        bin_.add_pad(Gst.GhostPad.new(f"src_{session}", self.rtx.get_static_pad("src")))
        return bin_

    def _fec_decoder(self, rtpbin: Gst.Element, session: int) -> Gst.Element | None:
        if self.args.fec_pt < 0:
            return None
        fec = Gst.ElementFactory.make("rtpulpfecdec")
        fec.set_property("pt", self.args.fec_pt)
        fec.set_property("storage", rtpbin.emit("get-internal-storage", session))
        self.fecs.append(fec)
        return fec

    def _new_jbuf(self, rtpbin: Gst.Element, jbuf: Gst.Element, session: int,
                  ssrc: int) -> None:
        jbuf.set_property("rtx-max-retries", self.args.rtx_retries)
        self.jbufs.append(jbuf)

    def _pad_added(self, rtpbin: Gst.Element, pad: Gst.Pad) -> None:
        name = pad.get_name()
        if not name.startswith("recv_rtp_src_"):
            return
        if self.linked or not name.endswith(f"_{self.args.pt}"):
            # other payload types (ULPFEC left over in passthrough, stray streams) are
            # swallowed: an unlinked pad would stop the whole receive path
            drop = Gst.ElementFactory.make("fakesink")
            drop.set_property("sync", False)
            drop.set_property("async", False)
            self.pipeline.add(drop)
            drop.sync_state_with_parent()
            pad.link(drop.get_static_pad("sink"))
            return
        self.linked = True
        self.media_ssrc = int(name.split("_")[4])
        sink = Gst.parse_bin_from_description(
            f"rtpvp8depay name=depay wait-for-keyframe={str(self.args.wait_keyframe).lower()} "
            "request-keyframe=true "
            "! vp8dec ! fakesink name=sink sync=false async=false", True)
        self.pipeline.add(sink)
        sink.sync_state_with_parent()
        pad.link(sink.get_static_pad("sink"))
        depay = sink.get_by_name("depay")
        depay.get_static_pad("sink").add_probe(Gst.PadProbeType.BUFFER, self._on_rtp)
        depay.get_static_pad("src").add_probe(Gst.PadProbeType.BUFFER, self._on_depay)
        sink.get_by_name("sink").get_static_pad("sink").add_probe(
            Gst.PadProbeType.BUFFER, self._on_frame)

    def _on_rtp(self, pad: Gst.Pad, info: Gst.PadProbeInfo) -> Gst.PadProbeReturn:
        # frames sent = distinct RTP timestamps that reached the depayloader, plus holes
        self.media_packets += 1
        data = _buffer_bytes(info.get_buffer())
        if len(data) >= 12:
            self.rtp_ts.add(int.from_bytes(data[4:8], "big"))
        self.digests.append(payload_digest(data))
        return Gst.PadProbeReturn.OK

    def _on_depay(self, pad: Gst.Pad, info: Gst.PadProbeInfo) -> Gst.PadProbeReturn:
        self.depay_frames += 1
        return Gst.PadProbeReturn.OK

    def _on_frame(self, pad: Gst.Pad, info: Gst.PadProbeInfo) -> Gst.PadProbeReturn:
        self.frames_decoded += 1
        return Gst.PadProbeReturn.OK

    def stats(self) -> dict[str, Any]:
        out = super().stats()
        out["mode"] = "recv"
        out["media_ssrc"] = self.media_ssrc
        out["frames_decoded"] = self.frames_decoded
        out["frames_depayloaded"] = self.depay_frames
        out["media_packets"] = self.media_packets
        out["media_digests"] = self.digests
        if self.rtp_ts:
            ts = sorted(self.rtp_ts)
            # sum of the steps between consecutive timestamps (mod 2^32, so a wrap of the
            # random base costs one step); a step of 10 s or more is a wrap artefact
            span = sum(((b - a) & 0xFFFFFFFF) for a, b in zip(ts, ts[1:], strict=False)
                       if ((b - a) & 0xFFFFFFFF) < VIDEO_CLOCK * 10)
            out["frames_expected"] = round(span * self.args.fps / VIDEO_CLOCK) + 1
        else:
            out["frames_expected"] = 0
        jb: dict[str, int] = {}
        for j in self.jbufs:
            st = j.get_property("stats")
            for key in ("num-pushed", "num-lost", "num-late", "num-duplicates", "rtx-count",
                        "rtx-success-count"):
                ok, v = st.get_uint64(key)
                if ok:
                    jb[key] = jb.get(key, 0) + int(v)
        out["jitterbuffer"] = jb
        if self.rtx is not None:
            out["rtx_packets"] = self.rtx.get_property("num-rtx-packets")
            out["rtx_assoc_packets"] = self.rtx.get_property("num-rtx-assoc-packets")
            out["rtx_requests"] = self.rtx.get_property("num-rtx-requests")
        if self.fecs:
            out["fec_recovered"] = sum(f.get_property("recovered") for f in self.fecs)
            out["fec_unrecovered"] = sum(f.get_property("unrecovered") for f in self.fecs)
        return out


def _buffer_bytes(buf: Gst.Buffer) -> bytes:
    """A buffer's bytes (GstRtpBuffer's map is awkward from Python: read the bytes)."""
    ok, info = buf.map(Gst.MapFlags.READ)
    if not ok:
        return b""
    try:
        return bytes(info.data)
    finally:
        buf.unmap(info)


def payload_digest(rtp: bytes) -> str:
    """Short digest of an RTP packet's payload (after CSRCs and the header extension, padding
    included): the node rewrites seq/ts/SSRC but must deliver payloads byte for byte."""
    off = 12 + 4 * (rtp[0] & 0x0F) if len(rtp) >= 12 else len(rtp)
    if len(rtp) >= 12 and rtp[0] & 0x10 and len(rtp) >= off + 4:
        off += 4 + 4 * int.from_bytes(rtp[off + 2:off + 4], "big")
    return hashlib.blake2b(rtp[off:], digest_size=8).hexdigest()


def _open_socket(args: argparse.Namespace) -> Gio.Socket:
    """The one UDP socket of this peer. With --remote, one empty RTCP RR goes out at once, so
    a NAT-style proxy (bench/lossy_link.py) opens our flow before anything else is sent."""
    lhost, lport = _hostport(args.local)
    gsock = Gio.Socket.new(Gio.SocketFamily.IPV4, Gio.SocketType.DATAGRAM,
                           Gio.SocketProtocol.UDP)
    gsock.bind(Gio.InetSocketAddress.new_from_string(lhost, lport), True)
    if args.remote:
        rr = bytes([0x80, 201, 0, 1]) + args.ssrc.to_bytes(4, "big")
        gsock.send_to(Gio.InetSocketAddress.new_from_string(*_hostport(args.remote)), rr)
    return gsock


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("mode", choices=("send", "recv"))
    ap.add_argument("--local", default="127.0.0.1:0", help="bind address (RTP+RTCP)")
    ap.add_argument("--remote", default=None,
                    help="peer host:port; recv without it answers the first sender")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--pt", type=int, default=96)
    ap.add_argument("--rtx-pt", type=int, default=97, help="-1: no RTX")
    ap.add_argument("--fec-pt", type=int, default=116, help="-1: no ULPFEC")
    ap.add_argument("--ssrc", type=lambda s: int(s, 0), default=None,
                    help="send: media SSRC (0x11223344); recv: own RTCP SSRC (0x55667788)")
    ap.add_argument("--rtx-ssrc", type=lambda s: int(s, 0), default=0x11223345)
    ap.add_argument("--remote-ssrc", type=lambda s: int(s, 0), default=0,
                    help="recv: media SSRC to expect (for rtprtxreceive ssrc-map)")
    ap.add_argument("--remote-rtx-ssrc", type=lambda s: int(s, 0), default=0)
    ap.add_argument("--fec-percentage", type=int, default=30)
    ap.add_argument("--latency", type=int, default=300, help="recv jitterbuffer ms")
    ap.add_argument("--wait-keyframe", action="store_true",
                    help="recv: rtpvp8depay drops frames after any loss until a keyframe")
    ap.add_argument("--rtx-retries", type=int, default=-1)
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--height", type=int, default=360)
    ap.add_argument("--fps", type=int, default=30)
    ap.add_argument("--bitrate", type=int, default=1_000_000)
    ap.add_argument("--gop", type=int, default=60)
    ap.add_argument("--wait-stdin", action="store_true",
                    help="after the ready line, wait for one stdin line (a JSON object of "
                         "option overrides, or empty) before building and starting the pipeline")
    args = ap.parse_args(argv)
    if args.ssrc is None:  # distinct defaults: equal SSRCs make rtpsession see a collision
        args.ssrc = 0x11223344 if args.mode == "send" else 0x55667788
    Gst.init(None)
    gsock = _open_socket(args)
    local = gsock.get_local_address()
    print(json.dumps({"ready": f"{local.get_address().to_string()}:{local.get_port()}"}),
          flush=True)
    if args.wait_stdin:
        line = sys.stdin.readline()
        for key, value in (json.loads(line) if line.strip() else {}).items():
            if not hasattr(args, key):
                raise SystemExit(f"unknown override {key!r}")
            setattr(args, key, value)
    peer: Peer = Sender(args, gsock) if args.mode == "send" else Receiver(args, gsock)
    out = peer.run()
    print(json.dumps(out), flush=True)
    return 1 if out.get("error") else 0


if __name__ == "__main__":
    sys.exit(main())
