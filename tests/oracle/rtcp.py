"""Pure-Python RTCP reference: compound parse and builders.

Formats: RFC 3550 §6.4-6.7 (SR, RR, SDES, BYE, APP), RFC 4585 §6.2.1 (generic NACK),
§6.3.1 (PLI), RFC 5104 §4.3.1 (FIR), draft-alvestrand-rmcat-remb-03 (REMB),
draft-holmer-rmcat-transport-wide-cc-extensions-01 §3.1 (TWCC feedback).

``parse`` returns one dict per packet with a ``type`` key, mirroring
``sfu._native.parse_rtcp``; every malformed input raises ``ValueError``.
"""

import struct
from collections.abc import Iterator

PT_SR, PT_RR, PT_SDES, PT_BYE, PT_APP, PT_RTPFB, PT_PSFB = 200, 201, 202, 203, 204, 205, 206
FMT_NACK, FMT_TWCC = 1, 15  # RTPFB
FMT_PLI, FMT_FIR, FMT_AFB = 1, 4, 15  # PSFB
SDES_CNAME = 1
REPORT_BLOCK = 24

# TWCC packet status symbols (§3.1.1).
NOT_RECEIVED, SMALL_DELTA, LARGE_DELTA = 0, 1, 2


def _signed24(v: int) -> int:
    return v - (1 << 24) if v & 0x800000 else v


def split(data: bytes) -> Iterator[tuple[int, int, int, bytes]]:
    """Yield (count_or_fmt, pt, padded?, body) for each packet of a compound.

    ``body`` excludes the 4-byte common header and any padding (RFC 3550 §6.4.1).
    """
    pos = 0
    n = len(data)
    if n == 0:
        raise ValueError("empty rtcp packet")
    while pos < n:
        if n - pos < 4:
            raise ValueError("rtcp header truncated")
        b0, pt, words = struct.unpack_from("!BBH", data, pos)
        if b0 >> 6 != 2:
            raise ValueError(f"rtcp version {b0 >> 6} != 2")
        end = pos + 4 * (words + 1)
        if end > n:
            raise ValueError("rtcp length overruns buffer")
        body_end = end
        padded = 1 if b0 & 0x20 else 0
        if padded:
            pad = data[end - 1]
            if pad == 0 or pad > end - pos - 4:
                raise ValueError("rtcp padding count invalid")
            body_end -= pad
        yield b0 & 0x1F, pt, padded, bytes(data[pos + 4 : body_end])
        pos = end


def _report_blocks(body: bytes, offset: int, count: int) -> list[dict[str, int]]:
    if offset + count * REPORT_BLOCK > len(body):
        raise ValueError("rtcp report blocks overrun packet")
    reports = []
    for i in range(count):
        ssrc, lost_word, hseq, jitter, lsr, dlsr = struct.unpack_from(
            "!IIIIII", body, offset + i * REPORT_BLOCK
        )
        reports.append(
            {
                "ssrc": ssrc,
                "fraction_lost": lost_word >> 24,
                "packets_lost": _signed24(lost_word & 0xFFFFFF),
                "highest_seq": hseq,
                "jitter": jitter,
                "lsr": lsr,
                "dlsr": dlsr,
            }
        )
    return reports


def _parse_sr(rc: int, body: bytes) -> dict[str, object]:
    if len(body) < 24:
        raise ValueError("rtcp sr truncated")
    ssrc, ntp, rtp_ts, packets, octets = struct.unpack_from("!IQIII", body, 0)
    return {
        "type": "sr", "ssrc": ssrc, "ntp": ntp, "rtp_ts": rtp_ts, "packets": packets,
        "octets": octets, "reports": _report_blocks(body, 24, rc),
    }


def _parse_rr(rc: int, body: bytes) -> dict[str, object]:
    if len(body) < 4:
        raise ValueError("rtcp rr truncated")
    (ssrc,) = struct.unpack_from("!I", body, 0)
    return {"type": "rr", "ssrc": ssrc, "reports": _report_blocks(body, 4, rc)}


def _parse_sdes(sc: int, body: bytes) -> dict[str, object]:
    chunks = []
    pos = 0
    for _ in range(sc):
        if pos + 4 > len(body):
            raise ValueError("rtcp sdes chunk overruns packet")
        (ssrc,) = struct.unpack_from("!I", body, pos)
        pos += 4
        items: dict[int, bytes] = {}
        while True:
            if pos >= len(body):
                raise ValueError("rtcp sdes item list not terminated")
            item_type = body[pos]
            if item_type == 0:
                pos += 1
                break
            if pos + 2 > len(body) or pos + 2 + body[pos + 1] > len(body):
                raise ValueError("rtcp sdes item overruns packet")
            length = body[pos + 1]
            items[item_type] = bytes(body[pos + 2 : pos + 2 + length])
            pos += 2 + length
        # The null terminator is followed by null octets up to the next 32-bit
        # boundary (RFC 3550 §6.5); body starts 4 bytes into the packet, so
        # body-relative alignment equals packet alignment.
        pos += -pos % 4
        chunks.append({"ssrc": ssrc, "items": items})
    return {"type": "sdes", "chunks": chunks}


def _parse_bye(sc: int, body: bytes) -> dict[str, object]:
    if 4 * sc > len(body):
        raise ValueError("rtcp bye ssrc list overruns packet")
    ssrcs = list(struct.unpack_from(f"!{sc}I", body, 0))
    reason = ""
    pos = 4 * sc
    if pos < len(body):
        length = body[pos]
        if pos + 1 + length > len(body):
            raise ValueError("rtcp bye reason overruns packet")
        reason = body[pos + 1 : pos + 1 + length].decode("utf-8", "replace")
    return {"type": "bye", "ssrcs": ssrcs, "reason": reason}


def _parse_app(subtype: int, body: bytes) -> dict[str, object]:
    if len(body) < 8:
        raise ValueError("rtcp app truncated")
    (ssrc,) = struct.unpack_from("!I", body, 0)
    return {"type": "app", "subtype": subtype, "ssrc": ssrc, "name": bytes(body[4:8]),
            "data": bytes(body[8:])}


def _parse_nack(sender: int, media: int, fci: bytes) -> dict[str, object]:
    # RFC 4585 wants >= 1 FCI entry; an empty NACK is harmless, so it parses to no
    # losses (as does a trailing partial entry left by RTCP padding).
    lost: list[int] = []
    for off in range(0, len(fci) - 3, 4):
        pid, blp = struct.unpack_from("!HH", fci, off)
        lost.append(pid)
        lost.extend((pid + i + 1) & 0xFFFF for i in range(16) if blp >> i & 1)
    return {"type": "nack", "sender_ssrc": sender, "media_ssrc": media, "lost": lost}


def _parse_twcc(sender: int, media: int, fci: bytes) -> dict[str, object]:
    if len(fci) < 8:
        raise ValueError("twcc header truncated")
    base_seq, count, ref_word = struct.unpack_from("!HHI", fci, 0)
    pos = 8
    symbols: list[int] = []
    while len(symbols) < count:
        if pos + 2 > len(fci):
            raise ValueError("twcc packet chunks overrun packet")
        (chunk,) = struct.unpack_from("!H", fci, pos)
        pos += 2
        left = count - len(symbols)
        if chunk & 0x8000 == 0:  # run-length chunk: T=0 | S(2) | length(13)
            sym, run = (chunk >> 13) & 0x3, chunk & 0x1FFF
            symbols.extend([sym] * min(run, left))
        elif chunk & 0x4000 == 0:  # status vector, 14 one-bit symbols
            symbols.extend((chunk >> (13 - i)) & 1 for i in range(min(14, left)))
        else:  # status vector, 7 two-bit symbols
            symbols.extend((chunk >> (12 - 2 * i)) & 3 for i in range(min(7, left)))
    # One (seq, symbol, delta) per packet; delta in 250 µs units, None if lost.
    packets: list[tuple[int, int, int | None]] = []
    for i, sym in enumerate(symbols):
        seq = (base_seq + i) & 0xFFFF
        if sym == NOT_RECEIVED:
            packets.append((seq, sym, None))
        elif sym == SMALL_DELTA:
            if pos + 1 > len(fci):
                raise ValueError("twcc receive deltas overrun packet")
            packets.append((seq, sym, fci[pos]))
            pos += 1
        elif sym == LARGE_DELTA:
            if pos + 2 > len(fci):
                raise ValueError("twcc receive deltas overrun packet")
            packets.append((seq, sym, struct.unpack_from("!h", fci, pos)[0]))
            pos += 2
        else:
            raise ValueError("twcc reserved status symbol")
    return {
        "type": "twcc", "sender_ssrc": sender, "media_ssrc": media, "base_seq": base_seq,
        "status_count": count, "ref_time": _signed24(ref_word >> 8), "fb_count": ref_word & 0xFF,
        "packets": packets,
    }


def _parse_psfb(fmt: int, sender: int, media: int, fci: bytes) -> dict[str, object]:
    if fmt == FMT_PLI:
        return {"type": "pli", "sender_ssrc": sender, "media_ssrc": media}
    if fmt == FMT_FIR:
        # The header's media SSRC is unused for FIR (RFC 5104 §4.3.1.2): targets are
        # the FCI entries; a partial trailing entry is ignored.
        entries = [struct.unpack_from("!IB", fci, off) for off in range(0, len(fci) - 7, 8)]
        return {"type": "fir", "sender_ssrc": sender,
                "entries": [{"ssrc": s, "seq_nr": q} for s, q in entries]}
    if fmt == FMT_AFB and len(fci) >= 8 and fci[:4] == b"REMB":
        (word,) = struct.unpack_from("!I", fci, 4)
        num, exp, mantissa = word >> 24, (word >> 18) & 0x3F, word & 0x3FFFF
        if 8 + 4 * num > len(fci):
            raise ValueError("remb ssrc list overruns packet")
        return {"type": "remb", "sender_ssrc": sender,
                "bitrate": mantissa << exp, "ssrcs": list(struct.unpack_from(f"!{num}I", fci, 8))}
    # Other application-layer feedback, or a REMB too short to be one.
    return {"type": "unknown", "packet_type": PT_PSFB, "fmt": fmt, "sender_ssrc": sender,
            "media_ssrc": media}


def parse(data: bytes) -> list[dict[str, object]]:
    out: list[dict[str, object]] = []
    for count, pt, _padded, body in split(data):
        if pt == PT_SR:
            out.append(_parse_sr(count, body))
        elif pt == PT_RR:
            out.append(_parse_rr(count, body))
        elif pt == PT_SDES:
            out.append(_parse_sdes(count, body))
        elif pt == PT_BYE:
            out.append(_parse_bye(count, body))
        elif pt == PT_APP:
            out.append(_parse_app(count, body))
        elif pt in (PT_RTPFB, PT_PSFB):
            if len(body) < 8:
                raise ValueError("rtcp feedback header truncated")
            sender, media = struct.unpack_from("!II", body, 0)
            fci = body[8:]
            if pt == PT_PSFB:
                out.append(_parse_psfb(count, sender, media, fci))
            elif count == FMT_NACK:
                out.append(_parse_nack(sender, media, fci))
            elif count == FMT_TWCC:
                out.append(_parse_twcc(sender, media, fci))
            else:
                out.append({"type": "unknown", "packet_type": pt, "fmt": count,
                            "sender_ssrc": sender, "media_ssrc": media})
        else:
            out.append({"type": "unknown", "packet_type": pt, "fmt": count})
    return out


# ---------------------------------------------------------------- builders


def header(count: int, pt: int, body: bytes, padding: int = 0) -> bytes:
    """Common header + body (+ RFC 3550 padding); body must be 32-bit aligned."""
    if (len(body) + padding) % 4:
        raise ValueError("rtcp body not 32-bit aligned")
    b0 = 0x80 | (0x20 if padding else 0) | count
    pad = b"\x00" * (padding - 1) + bytes((padding,)) if padding else b""
    return struct.pack("!BBH", b0, pt, (len(body) + padding) // 4) + body + pad


def _block(r: dict[str, int]) -> bytes:
    return struct.pack(
        "!IIIIII", r["ssrc"], (r["fraction_lost"] << 24) | (r["packets_lost"] & 0xFFFFFF),
        r["highest_seq"], r["jitter"], r["lsr"], r["dlsr"])


def build_sr(ssrc: int, ntp: int, rtp_ts: int, packets: int, octets: int,
             reports: list[dict[str, int]] | None = None) -> bytes:
    reports = reports or []
    body = struct.pack("!IQIII", ssrc, ntp, rtp_ts, packets, octets)
    return header(len(reports), PT_SR, body + b"".join(_block(r) for r in reports))


def build_rr(ssrc: int, reports: list[dict[str, int]]) -> bytes:
    body = struct.pack("!I", ssrc) + b"".join(_block(r) for r in reports)
    return header(len(reports), PT_RR, body)


def build_sdes(ssrc: int, cname: str) -> bytes:
    text = cname.encode()
    chunk = struct.pack("!IBB", ssrc, SDES_CNAME, len(text)) + text + b"\x00"
    chunk += b"\x00" * (-len(chunk) % 4)
    return header(1, PT_SDES, chunk)


def build_bye(ssrcs: list[int], reason: str = "") -> bytes:
    body = b"".join(struct.pack("!I", s) for s in ssrcs)
    if reason:
        text = reason.encode()
        body += bytes((len(text),)) + text
        body += b"\x00" * (-len(body) % 4)
    return header(len(ssrcs), PT_BYE, body)


def build_app(subtype: int, ssrc: int, name: bytes, data: bytes) -> bytes:
    return header(subtype, PT_APP, struct.pack("!I", ssrc) + name + data)


def nack_pairs(lost: list[int]) -> list[tuple[int, int]]:
    """Group lost seqs (in the given order) into (PID, BLP) pairs, RFC 4585 §6.2.1."""
    pairs: list[list[int]] = []
    for seq in lost:
        if pairs:
            off = (seq - pairs[-1][0]) & 0xFFFF
            if 1 <= off <= 16:
                pairs[-1][1] |= 1 << (off - 1)
                continue
        pairs.append([seq, 0])
    return [(p, b) for p, b in pairs]


def build_nack(sender_ssrc: int, media_ssrc: int, lost: list[int]) -> bytes:
    fci = b"".join(struct.pack("!HH", p, b) for p, b in nack_pairs(lost))
    return header(FMT_NACK, PT_RTPFB, struct.pack("!II", sender_ssrc, media_ssrc) + fci)


def build_pli(sender_ssrc: int, media_ssrc: int) -> bytes:
    return header(FMT_PLI, PT_PSFB, struct.pack("!II", sender_ssrc, media_ssrc))


def build_fir(sender_ssrc: int, media_ssrc: int, seq_nr: int) -> bytes:
    # RFC 5104 §4.3.1.2: the header's media source SSRC is 0; the target is in the FCI.
    body = struct.pack("!IIIB3x", sender_ssrc, 0, media_ssrc, seq_nr)
    return header(FMT_FIR, PT_PSFB, body)


def remb_encode(bitrate: int) -> tuple[int, int]:
    """(exponent, mantissa) with an 18-bit mantissa, rounding down."""
    exp = 0
    while bitrate >> exp > 0x3FFFF:
        exp += 1
    return exp, bitrate >> exp


def build_remb(sender_ssrc: int, bitrate: int, ssrcs: list[int]) -> bytes:
    exp, mantissa = remb_encode(bitrate)
    body = struct.pack("!II4sI", sender_ssrc, 0, b"REMB", (len(ssrcs) << 24) | (exp << 18)
                       | mantissa)
    body += b"".join(struct.pack("!I", s) for s in ssrcs)
    return header(FMT_AFB, PT_PSFB, body)


def twcc_packets(base_seq: int, deltas: list[int | None]) -> list[tuple[int, int, int | None]]:
    """The ``packets`` list a parse yields for deltas sent with the natural symbols."""
    return [((base_seq + i) & 0xFFFF, twcc_symbol(d), d) for i, d in enumerate(deltas)]


def twcc_symbol(delta: int | None) -> int:
    if delta is None:
        return NOT_RECEIVED
    return SMALL_DELTA if 0 <= delta <= 255 else LARGE_DELTA


def twcc_chunks(symbols: list[int], mode: str = "auto") -> list[int]:
    """Encode status symbols as 16-bit chunks.

    mode "auto": run-length for runs >= 7, else the densest vector that fits;
    "run": only run-length chunks; "vec1"/"vec2": only status vectors (vec1 falls
    back to vec2 for a span holding a large delta).
    """
    chunks: list[int] = []
    i = 0
    n = len(symbols)
    while i < n:
        run = 1
        while i + run < n and symbols[i + run] == symbols[i] and run < 0x1FFF:
            run += 1
        if mode == "run" or (mode == "auto" and run >= 7):
            chunks.append((symbols[i] << 13) | run)
            i += run
            continue
        span = symbols[i : i + 14]
        if mode in ("auto", "vec1") and all(s <= 1 for s in span):
            word = 0x8000
            for k, s in enumerate(span):
                word |= s << (13 - k)
            chunks.append(word)
            i += len(span)
        else:
            span = symbols[i : i + 7]
            word = 0xC000
            for k, s in enumerate(span):
                word |= s << (12 - 2 * k)
            chunks.append(word)
            i += len(span)
    return chunks


def build_twcc(sender_ssrc: int, media_ssrc: int, base_seq: int, ref_time: int,
               fb_count: int, deltas: list[int | None], mode: str = "auto") -> bytes:
    symbols = [twcc_symbol(d) for d in deltas]
    body = struct.pack("!IIHHI", sender_ssrc, media_ssrc, base_seq, len(deltas),
                       ((ref_time & 0xFFFFFF) << 8) | fb_count)
    body += b"".join(struct.pack("!H", c) for c in twcc_chunks(symbols, mode))
    for d, s in zip(deltas, symbols, strict=True):
        if s == SMALL_DELTA:
            body += bytes((d,))
        elif s == LARGE_DELTA:
            assert d is not None
            body += struct.pack("!h", d)
    pad = -len(body) % 4
    # Trailing zero bytes (not RTCP padding) align the FCI, per the draft §3.1.
    return header(FMT_TWCC, PT_RTPFB, body + b"\x00" * pad)
