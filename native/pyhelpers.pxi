# Python-visible parse/build helpers for tests and the client library. They allocate
# Python objects and raise ValueError; the engine's data path never calls them.

cdef list _u32_list(const uint8_t *p, int count):
    cdef int i
    cdef list out = []
    for i in range(count):
        out.append(rd32(p + 4 * i))
    return out


def parse_rtp(const uint8_t[::1] data not None):
    cdef RtpView v
    cdef Py_ssize_t n = data.shape[0]
    cdef const uint8_t *d = &data[0] if n else NULL
    cdef int err = rtp_parse(d, n, &v) if n else RTP_ERR_SHORT
    cdef Py_ssize_t p, end, elen
    cdef int eid
    if err:
        raise ValueError(RTP_ERROR_TEXT[err])
    exts = {}
    if v.ext_size:
        p = v.ext_offset
        end = p + v.ext_size
        if v.ext_profile == 0xBEDE:
            while p < end:
                if (d[p] >> 4) == 0:
                    p += 1
                    continue
                eid = d[p] >> 4
                if eid == 15:
                    break
                elen = (d[p] & 0x0F) + 1
                if p + 1 + elen > end:
                    raise ValueError("header extension element overruns the extension block")
                if eid not in exts:   # first occurrence wins, as in rtp_extension
                    exts[eid] = bytes(data[p + 1:p + 1 + elen])
                p += 1 + elen
        elif (v.ext_profile & 0xFFF0) == 0x1000:
            while p < end:
                if d[p] == 0:
                    p += 1
                    continue
                if p + 2 > end:
                    raise ValueError("header extension element overruns the extension block")
                eid = d[p]
                elen = d[p + 1]
                if p + 2 + elen > end:
                    raise ValueError("header extension element overruns the extension block")
                if eid not in exts:
                    exts[eid] = bytes(data[p + 2:p + 2 + elen])
                p += 2 + elen
    return {
        "version": 2,
        "padding": bool(d[0] & 0x20),
        "extension": bool(d[0] & 0x10),
        "csrc_count": v.csrc_count,
        "marker": bool(v.marker),
        "payload_type": v.payload_type,
        "sequence_number": v.seq,
        "timestamp": v.ts,
        "ssrc": v.ssrc,
        "csrcs": _u32_list(d + 12, v.csrc_count),
        "ext_profile": v.ext_profile if d[0] & 0x10 else None,
        "extensions": exts,
        "header_size": v.header_size,
        "payload_size": v.payload_size,
        "padding_size": v.padding_size,
        "payload": bytes(data[v.header_size:v.header_size + v.payload_size]),
    }


def rtp_extension(const uint8_t[::1] data not None, int ext_id):
    cdef RtpView v
    cdef Py_ssize_t off = 0, ln = 0
    cdef int r
    if data.shape[0] == 0 or rtp_parse(&data[0], data.shape[0], &v):
        raise ValueError("not a valid RTP packet")
    r = rtp_ext_find(&data[0], &v, ext_id, &off, &ln)
    if r < 0:
        raise ValueError("header extension element overruns the extension block")
    if r == 0:
        return None
    return bytes(data[off:off + ln])


def build_rtp(int payload_type, int sequence_number, unsigned int timestamp, unsigned int ssrc,
              bytes payload, marker=False, csrcs=None, extensions=None, int padding=0):
    if not 0 <= payload_type <= 127:
        raise ValueError("payload_type must be 0..127")
    if not 0 <= padding <= 255:
        raise ValueError("padding must be 0..255")
    csrcs = list(csrcs or [])
    if len(csrcs) > 15:
        raise ValueError("at most 15 CSRCs")
    ext_block = b""
    profile = 0
    if extensions:
        two_byte = any(not 1 <= i <= 14 or not 1 <= len(v) <= 16 for i, v in extensions.items())
        parts = []
        for i, val in sorted(extensions.items()):
            if two_byte:
                if not 1 <= i <= 255 or len(val) > 255:
                    raise ValueError("extension id/length out of range")
                parts.append(bytes([i, len(val)]) + val)
            else:
                parts.append(bytes([(i << 4) | (len(val) - 1)]) + val)
        ext_block = b"".join(parts)
        ext_block += b"\x00" * ((4 - len(ext_block) % 4) % 4)
        profile = 0x1000 if two_byte else 0xBEDE
    first = 0x80 | (0x20 if padding else 0) | (0x10 if extensions else 0) | len(csrcs)
    out = bytearray()
    out += bytes([first, (0x80 if marker else 0) | payload_type])
    out += (sequence_number & 0xFFFF).to_bytes(2, "big")
    out += (timestamp & 0xFFFFFFFF).to_bytes(4, "big")
    out += (ssrc & 0xFFFFFFFF).to_bytes(4, "big")
    for c in csrcs:
        out += (c & 0xFFFFFFFF).to_bytes(4, "big")
    if extensions:
        out += profile.to_bytes(2, "big") + (len(ext_block) // 4).to_bytes(2, "big") + ext_block
    out += payload
    if padding:
        out += b"\x00" * (padding - 1) + bytes([padding])
    return bytes(out)


cdef list _report_blocks(const uint8_t *p, int count):
    cdef ReportBlock b
    cdef list out = []
    cdef int i
    for i in range(count):
        read_report_block(p + 24 * i, &b)
        out.append({"ssrc": b.ssrc, "fraction_lost": b.fraction, "packets_lost": b.lost,
                    "highest_seq": b.highest, "jitter": b.jitter, "lsr": b.lsr,
                    "dlsr": b.dlsr})
    return out


cdef dict _parse_twcc(const uint8_t *p, Py_ssize_t n):
    # draft-holmer-rmcat-transport-wide-cc-extensions-01, section 3.1
    cdef Py_ssize_t off = 8, i
    cdef int base, count, status, sym, j, chunk, run
    if n < 8:
        raise ValueError("transport-cc feedback shorter than its fixed part")
    base = rd16(p)
    count = rd16(p + 2)
    ref = rd24(p + 4)
    if ref & 0x800000:
        ref -= 1 << 24
    fb_count = p[7]
    statuses = []
    while len(statuses) < count:
        if off + 2 > n:
            raise ValueError("transport-cc status chunks overrun the packet")
        chunk = rd16(p + off)
        off += 2
        if chunk & 0x8000 == 0:
            sym = (chunk >> 13) & 0x3
            run = chunk & 0x1FFF
            statuses.extend([sym] * min(run, count - len(statuses)))
        elif chunk & 0x4000 == 0:
            for j in range(14):
                if len(statuses) < count:
                    statuses.append((chunk >> (13 - j)) & 0x1)
        else:
            for j in range(7):
                if len(statuses) < count:
                    statuses.append((chunk >> (12 - 2 * j)) & 0x3)
    packets = []
    for i in range(count):
        status = statuses[i]
        seq = (base + i) & 0xFFFF
        if status == 1:
            if off + 1 > n:
                raise ValueError("transport-cc deltas overrun the packet")
            packets.append((seq, status, p[off]))
            off += 1
        elif status == 2:
            if off + 2 > n:
                raise ValueError("transport-cc deltas overrun the packet")
            packets.append((seq, status, <int16_t>rd16(p + off)))
            off += 2
        elif status == 0:
            packets.append((seq, status, None))
        else:
            raise ValueError("transport-cc reserved status symbol 3")
    return {"base_seq": base, "status_count": count, "ref_time": ref, "fb_count": fb_count,
            "packets": packets}


def parse_rtcp(const uint8_t[::1] data not None):
    cdef Py_ssize_t n = data.shape[0], off = 0, plen, body, i, k
    cdef const uint8_t *d
    cdef const uint8_t *p
    cdef int rc, pt, pad
    if n == 0 or rtcp_validate(&data[0], n) < 0:
        raise ValueError("malformed compound RTCP packet (version, length or padding)")
    d = &data[0]
    out = []
    while off < n:
        p = d + off
        rc = p[0] & 0x1F
        pt = p[1]
        plen = (<Py_ssize_t>rd16(p + 2) + 1) * 4
        pad = p[plen - 1] if p[0] & 0x20 else 0
        body = plen - pad
        if pt == RTCP_SR:
            if body < 28 + 24 * rc:
                raise ValueError("SR shorter than its report count")
            out.append({"type": "sr", "ssrc": rd32(p + 4),
                        "ntp": (<uint64_t>rd32(p + 8) << 32) | rd32(p + 12),
                        "rtp_ts": rd32(p + 16), "packets": rd32(p + 20),
                        "octets": rd32(p + 24), "reports": _report_blocks(p + 28, rc)})
        elif pt == RTCP_RR:
            if body < 8 + 24 * rc:
                raise ValueError("RR shorter than its report count")
            out.append({"type": "rr", "ssrc": rd32(p + 4),
                        "reports": _report_blocks(p + 8, rc)})
        elif pt == RTCP_SDES:
            chunks = []
            k = 4
            for i in range(rc):
                if k + 4 > body:
                    raise ValueError("SDES chunk overruns the packet")
                items = {}
                ssrc = rd32(p + k)
                k += 4
                while True:
                    if k >= body:
                        raise ValueError("SDES items overrun the packet")
                    if p[k] == 0:
                        k = (k + 4) & ~3
                        break
                    if k + 2 > body or k + 2 + p[k + 1] > body:
                        raise ValueError("SDES item overruns the packet")
                    items[p[k]] = bytes(data[off + k + 2:off + k + 2 + p[k + 1]])
                    k += 2 + p[k + 1]
                chunks.append({"ssrc": ssrc, "items": items})
            out.append({"type": "sdes", "chunks": chunks})
        elif pt == RTCP_BYE:
            if body < 4 + 4 * rc:
                raise ValueError("BYE shorter than its source count")
            reason = ""
            k = 4 + 4 * rc
            if k < body:
                if k + 1 + p[k] > body:
                    raise ValueError("BYE reason overruns the packet")
                reason = bytes(data[off + k + 1:off + k + 1 + p[k]]).decode("utf-8", "replace")
            out.append({"type": "bye", "ssrcs": _u32_list(p + 4, rc),
                        "reason": reason})
        elif pt == RTCP_APP:
            if body < 12:
                raise ValueError("APP shorter than 12 bytes")
            out.append({"type": "app", "subtype": rc, "ssrc": rd32(p + 4),
                        "name": bytes(data[off + 8:off + 12]),
                        "data": bytes(data[off + 12:off + body])})
        elif pt == RTCP_RTPFB or pt == RTCP_PSFB:
            if body < 12:
                raise ValueError("feedback packet shorter than 12 bytes")
            sender = rd32(p + 4)
            media = rd32(p + 8)
            if pt == RTCP_RTPFB and rc == FMT_NACK:
                lost = []
                for i in range((body - 12) // 4):
                    pid = rd16(p + 12 + 4 * i)
                    blp = rd16(p + 14 + 4 * i)
                    lost.append(pid)
                    for k in range(16):
                        if blp & (1 << k):
                            lost.append((pid + k + 1) & 0xFFFF)
                out.append({"type": "nack", "sender_ssrc": sender, "media_ssrc": media,
                            "lost": lost})
            elif pt == RTCP_RTPFB and rc == FMT_TWCC:
                fb = _parse_twcc(p + 12, body - 12)
                fb.update({"type": "twcc", "sender_ssrc": sender, "media_ssrc": media})
                out.append(fb)
            elif pt == RTCP_PSFB and rc == FMT_PLI:
                out.append({"type": "pli", "sender_ssrc": sender, "media_ssrc": media})
            elif pt == RTCP_PSFB and rc == FMT_FIR:
                entries = []
                for i in range((body - 12) // 8):
                    entries.append({"ssrc": rd32(p + 12 + 8 * i), "seq_nr": p[16 + 8 * i]})
                out.append({"type": "fir", "sender_ssrc": sender, "entries": entries})
            elif (pt == RTCP_PSFB and rc == FMT_AFB and body >= 20
                  and memcmp(p + 12, b"REMB", 4) == 0):
                num = p[16]
                if body < 20 + 4 * num:
                    raise ValueError("REMB SSRC list overruns the packet")
                exp = p[17] >> 2
                mantissa = ((p[17] & 0x3) << 16) | rd16(p + 18)
                out.append({"type": "remb", "sender_ssrc": sender,
                            "bitrate": mantissa << exp,
                            "ssrcs": _u32_list(p + 20, num)})
            else:
                out.append({"type": "unknown", "packet_type": pt, "fmt": rc,
                            "sender_ssrc": sender, "media_ssrc": media})
        else:
            out.append({"type": "unknown", "packet_type": pt, "fmt": rc})
        off += plen
    return out


cdef ReportBlock _block_from(dict r) except *:
    cdef ReportBlock b
    b.ssrc = r["ssrc"]
    b.fraction = r.get("fraction_lost", 0)
    b.lost = r.get("packets_lost", 0)
    b.highest = r.get("highest_seq", 0)
    b.jitter = r.get("jitter", 0)
    b.lsr = r.get("lsr", 0)
    b.dlsr = r.get("dlsr", 0)
    return b


def build_sr(unsigned int ssrc, unsigned long long ntp, unsigned int rtp_ts,
             unsigned int packets, unsigned int octets, reports=None):
    cdef uint8_t buf[28 + 24 * 31]
    cdef ReportBlock blocks[31]
    reports = list(reports or [])
    if len(reports) > 31:
        raise ValueError("at most 31 report blocks")
    for i, r in enumerate(reports):
        blocks[i] = _block_from(r)
    n = build_sr_into(buf, ssrc, ntp, rtp_ts, packets, octets, blocks, len(reports))
    return bytes(buf[:n])


def build_rr(unsigned int ssrc, reports):
    cdef uint8_t buf[8 + 24 * 31]
    cdef ReportBlock blocks[31]
    reports = list(reports)
    if len(reports) > 31:
        raise ValueError("at most 31 report blocks")
    for i, r in enumerate(reports):
        blocks[i] = _block_from(r)
    n = build_rr_into(buf, ssrc, blocks, len(reports))
    return bytes(buf[:n])


def build_sdes(unsigned int ssrc, str cname):
    cdef uint8_t buf[300]
    cdef bytes b = cname.encode("utf-8")
    if len(b) > 255:
        raise ValueError("CNAME longer than 255 bytes")
    n = build_sdes_into(buf, ssrc, b, len(b))
    return bytes(buf[:n])


def build_bye(ssrcs, str reason=""):
    ssrcs = list(ssrcs)
    rb = reason.encode("utf-8")
    if len(ssrcs) > 31 or len(rb) > 255:
        raise ValueError("at most 31 SSRCs and a 255-byte reason")
    body = b"".join((s & 0xFFFFFFFF).to_bytes(4, "big") for s in ssrcs)
    if rb:
        body += bytes([len(rb)]) + rb
        body += b"\x00" * ((4 - len(body) % 4) % 4)
    total = 4 + len(body)
    return bytes([0x80 | len(ssrcs), RTCP_BYE]) + (total // 4 - 1).to_bytes(2, "big") + body


def build_nack(unsigned int sender_ssrc, unsigned int media_ssrc, lost):
    lost = [s & 0xFFFF for s in lost]
    if not lost:
        raise ValueError("NACK needs at least one lost sequence number")
    first = lost[0]
    # Order relative to the first loss so runs across the 65535 -> 0 wrap pack together.
    seqs = sorted(set(lost), key=lambda s: (s - first) & 0xFFFF)
    items = []
    while seqs:
        pid = seqs.pop(0)
        blp = 0
        rest = []
        for s in seqs:
            d = (s - pid) & 0xFFFF
            if 1 <= d <= 16:
                blp |= 1 << (d - 1)
            else:
                rest.append(s)
        seqs = rest
        items.append(pid.to_bytes(2, "big") + blp.to_bytes(2, "big"))
    if not items:
        raise ValueError("NACK needs at least one lost sequence number")
    total = 12 + 4 * len(items)
    return (bytes([0x80 | FMT_NACK, RTCP_RTPFB]) + (total // 4 - 1).to_bytes(2, "big")
            + sender_ssrc.to_bytes(4, "big") + media_ssrc.to_bytes(4, "big") + b"".join(items))


def build_pli(unsigned int sender_ssrc, unsigned int media_ssrc):
    cdef uint8_t buf[12]
    build_pli_into(buf, sender_ssrc, media_ssrc)
    return bytes(buf[:12])


def build_fir(unsigned int sender_ssrc, unsigned int media_ssrc, int seq_nr):
    cdef uint8_t buf[20]
    build_fir_into(buf, sender_ssrc, media_ssrc, <uint8_t>(seq_nr & 0xFF))
    return bytes(buf[:20])


def build_remb(unsigned int sender_ssrc, unsigned long long bitrate, ssrcs):
    ssrcs = list(ssrcs)
    if len(ssrcs) > 255:
        raise ValueError("at most 255 SSRCs")
    exp = 0
    while (bitrate >> exp) > 0x3FFFF:
        exp += 1
    if exp > 63:
        raise ValueError("bitrate too large")
    mantissa = bitrate >> exp
    body = (b"REMB" + bytes([len(ssrcs), (exp << 2) | (mantissa >> 16)])
            + (mantissa & 0xFFFF).to_bytes(2, "big")
            + b"".join((s & 0xFFFFFFFF).to_bytes(4, "big") for s in ssrcs))
    total = 12 + len(body)
    return (bytes([0x80 | FMT_AFB, RTCP_PSFB]) + (total // 4 - 1).to_bytes(2, "big")
            + sender_ssrc.to_bytes(4, "big") + b"\x00\x00\x00\x00" + body)


def build_twcc(unsigned int sender_ssrc, unsigned int media_ssrc, int base_seq, int ref_time,
               int fb_count, deltas):
    """Encode with two-bit status-vector chunks (7 symbols each); deltas in 250 µs units."""
    deltas = list(deltas)
    if not deltas or len(deltas) > 0xFFFF:
        raise ValueError("transport-cc feedback needs 1..65535 packet statuses")
    symbols = []
    delta_bytes = bytearray()
    for dlt in deltas:
        if dlt is None:
            symbols.append(0)
        elif 0 <= dlt <= 255:
            symbols.append(1)
            delta_bytes.append(dlt)
        elif -32768 <= dlt <= 32767:
            symbols.append(2)
            delta_bytes += (dlt & 0xFFFF).to_bytes(2, "big")
        else:
            raise ValueError("receive delta out of range")
    chunks = bytearray()
    for i in range(0, len(symbols), 7):
        group = symbols[i:i + 7] + [0] * (7 - len(symbols[i:i + 7]))
        word = 0xC000
        for j, s in enumerate(group):
            word |= s << (12 - 2 * j)
        chunks += word.to_bytes(2, "big")
    body = ((base_seq & 0xFFFF).to_bytes(2, "big") + len(deltas).to_bytes(2, "big")
            + (ref_time & 0xFFFFFF).to_bytes(3, "big") + bytes([fb_count & 0xFF])
            + bytes(chunks) + bytes(delta_bytes))
    pad = (4 - len(body) % 4) % 4
    first = 0x80 | FMT_TWCC
    if pad:
        body += b"\x00" * (pad - 1) + bytes([pad])
        first |= 0x20
    total = 12 + len(body)
    return (bytes([first, RTCP_RTPFB]) + (total // 4 - 1).to_bytes(2, "big")
            + sender_ssrc.to_bytes(4, "big") + media_ssrc.to_bytes(4, "big") + body)
