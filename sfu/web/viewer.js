// sfu browser viewer: WebTransport datagrams carry exactly what a UDP client of the node
// receives (RTP of this viewer's subscriptions, RTCP incl. SFUD data messages, docs/data.md).
// Video: RFC 7741 (VP8) / RFC 6184 (H.264) depacketized, decoded with WebCodecs and drawn
// into the co-stream layout's tiles. Audio: Opus decoded with AudioDecoder (counted, not
// played). Plain script, no build step, no external URLs.
"use strict";

(() => {
  const stats = {
    connected: false, status: "loading", framesDecoded: { vp8: 0, h264: 0 }, audioFrames: 0,
    comments: [], layout: { mode: null, version: 0, slots: [] }, errors: [],
    datagrams: 0, rtp: 0, rtcp: 0, sfud: 0, plis: 0, framesDropped: 0, nacks: 0, malformed: 0,
    subscriptions: 0, stateVersion: 0, tiles: {}, reports: 0, messages: {},
  };
  const MAX_KEEP = 500; // comments and errors kept in stats and on the page
  // onDatagram is exposed for offline fuzzing of the parsers (no other use).
  window.sfuViewer = { stats, onDatagram: (d) => onDatagram(d) };

  const $ = (id) => document.getElementById(id);
  const setStatus = (text, bad) => {
    stats.status = text;
    const el = $("status");
    el.textContent = text;
    el.classList.toggle("error", !!bad);
  };
  const fail = (what, err) => {
    const text = `${what}: ${err && err.message ? err.message : err}`;
    stats.errors.push(text);
    if (stats.errors.length > MAX_KEEP) stats.errors.shift();
    const li = document.createElement("li");
    li.textContent = text;
    const list = $("errors");
    list.appendChild(li);
    while (list.children.length > MAX_KEEP) list.firstChild.remove();
  };
  const isIndex = (v) => Number.isSafeInteger(v) && v >= 0;

  // -- msgpack (decode everything the node sends; encode ints, strings, arrays, maps) -------
  const utf8 = new TextDecoder("utf-8", { fatal: false });
  function unpack(bytes) {
    const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    let pos = 0;
    const need = (n) => { if (pos + n > bytes.length) throw new Error("msgpack: truncated"); };
    const u8 = () => { need(1); return bytes[pos++]; };
    const u16 = () => { need(2); const v = view.getUint16(pos); pos += 2; return v; };
    const u32 = () => { need(4); const v = view.getUint32(pos); pos += 4; return v; };
    const u64 = () => { const hi = u32(); return hi * 4294967296 + u32(); };
    const i64 = () => { need(8); const hi = view.getInt32(pos); pos += 4; return hi * 4294967296 + u32(); };
    const str = (n) => { need(n); const s = utf8.decode(bytes.subarray(pos, pos + n)); pos += n; return s; };
    const bin = (n) => { need(n); const b = bytes.slice(pos, pos + n); pos += n; return b; };
    function value(depth) {
      if (depth > 32) throw new Error("msgpack: nested too deeply");
      const b = u8();
      if (b <= 0x7f) return b;
      if (b >= 0xe0) return b - 0x100;
      if ((b & 0xe0) === 0xa0) return str(b & 0x1f);
      if ((b & 0xf0) === 0x90) return array(b & 0x0f, depth);
      if ((b & 0xf0) === 0x80) return map(b & 0x0f, depth);
      switch (b) {
        case 0xc0: return null;
        case 0xc2: return false;
        case 0xc3: return true;
        case 0xc4: return bin(u8());
        case 0xc5: return bin(u16());
        case 0xc6: return bin(u32());
        case 0xca: { need(4); const v = view.getFloat32(pos); pos += 4; return v; }
        case 0xcb: { need(8); const v = view.getFloat64(pos); pos += 8; return v; }
        case 0xcc: return u8();
        case 0xcd: return u16();
        case 0xce: return u32();
        case 0xcf: return u64();
        case 0xd0: { const v = u8(); return v > 127 ? v - 256 : v; }
        case 0xd1: { const v = u16(); return v > 32767 ? v - 65536 : v; }
        case 0xd2: { need(4); const v = view.getInt32(pos); pos += 4; return v; }
        case 0xd3: return i64();
        case 0xd9: return str(u8());
        case 0xda: return str(u16());
        case 0xdb: return str(u32());
        case 0xdc: return array(u16(), depth);
        case 0xdd: return array(u32(), depth);
        case 0xde: return map(u16(), depth);
        case 0xdf: return map(u32(), depth);
        default: throw new Error(`msgpack: unsupported type 0x${b.toString(16)}`);
      }
    }
    function array(n, depth) {
      if (n > bytes.length - pos) throw new Error("msgpack: array longer than its data");
      const out = new Array(n);
      for (let i = 0; i < n; i++) out[i] = value(depth + 1);
      return out;
    }
    function map(n, depth) {
      if (n > bytes.length - pos) throw new Error("msgpack: map longer than its data");
      const out = {};
      for (let i = 0; i < n; i++) {
        const k = value(depth + 1);
        out[String(k)] = value(depth + 1);
      }
      return out;
    }
    return value(0); // 0-3 zero bytes of fill may follow (docs/data.md): ignored
  }
  function pack(v, out = []) {
    if (Number.isInteger(v) && v >= 0) {
      if (v < 128) out.push(v);
      else if (v < 65536) out.push(0xcd, v >> 8, v & 255);
      else out.push(0xce, (v >>> 24) & 255, (v >>> 16) & 255, (v >>> 8) & 255, v & 255);
    } else if (typeof v === "string") {
      const b = new TextEncoder().encode(v);
      out.push(0xd9, b.length, ...b);
    } else if (Array.isArray(v)) {
      out.push(0xdc, v.length >> 8, v.length & 255);
      v.forEach((x) => pack(x, out));
    } else {
      const keys = Object.keys(v);
      out.push(0x80 | keys.length);
      keys.forEach((k) => { pack(k, out); pack(v[k], out); });
    }
    return out;
  }

  // -- RTCP (RFC 3550 compound, APP "SFUD"; PLI RFC 4585) ------------------------------------
  const mySsrc = (crypto.getRandomValues(new Uint32Array(1))[0] | 1) >>> 0;
  function appPacket(subtype, payload) {
    const fill = (4 - (payload.length % 4)) % 4;
    const buf = new Uint8Array(12 + payload.length + fill);
    const dv = new DataView(buf.buffer);
    buf[0] = 0x80 | subtype; buf[1] = 204;
    dv.setUint16(2, buf.length / 4 - 1); dv.setUint32(4, mySsrc);
    buf.set([0x53, 0x46, 0x55, 0x44], 8); // "SFUD"
    buf.set(payload, 12);
    return buf;
  }
  function pliPacket(mediaSsrc) {
    const buf = new Uint8Array(12);
    const dv = new DataView(buf.buffer);
    buf[0] = 0x81; buf[1] = 206; dv.setUint16(2, 2); // V=2 FMT=1 PSFB, 3 words
    dv.setUint32(4, mySsrc); dv.setUint32(8, mediaSsrc >>> 0);
    return buf;
  }
  function onRtcp(d) {
    stats.rtcp++;
    let off = 0;
    while (d.length - off >= 4) {
      if (d[off] >> 6 !== 2) return;
      const size = (((d[off + 2] << 8) | d[off + 3]) + 1) * 4;
      if (off + size > d.length) return;
      if (d[off + 1] === 204 && size >= 12 && d[off + 8] === 0x53 && d[off + 9] === 0x46 &&
          d[off + 10] === 0x55 && d[off + 11] === 0x44) {
        let stop = off + size;
        if (d[off] & 0x20) stop -= d[stop - 1];
        if (stop >= off + 12) {
          try {
            onSfud(d[off] & 0x1f, unpack(d.subarray(off + 12, stop)));
          } catch (e) { stats.malformed++; } // network input: counted, never fatal
        }
      }
      off += size;
    }
  }

  // -- data messages: BATCH (comments, layout), STATE (subscriptions) -----------------------
  const prio = { start: null, top: 0, seen: new Set(), missing: new Map() };
  const stateParts = new Map(); // version -> Map(part -> map)
  function onSfud(subtype, msg) {
    stats.sfud++;
    if (subtype === 1 && msg && Array.isArray(msg.m)) {
      for (const m of msg.m) onMessage(m);
      if (isIndex(msg.hp)) {
        if (prio.start === null) prio.start = msg.hp + 1;
        prio.top = Math.max(prio.top, msg.hp);
      }
      findGaps();
    } else if (subtype === 4 && msg && Array.isArray(msg.subs)) {
      onStatePart(msg);
    }
  }
  function onMessage(m) {
    if (!m || typeof m !== "object") return;
    if (isIndex(m.pi)) {
      if (prio.seen.has(m.pi)) return; // a NACK answer we already had
      prio.seen.add(m.pi);
      prio.missing.delete(m.pi);
      if (prio.start === null || m.pi < prio.start) prio.start = m.pi;
      prio.top = Math.max(prio.top, m.pi);
    }
    if (typeof m.k === "string" && m.k.length <= 32) stats.messages[m.k] = (stats.messages[m.k] || 0) + 1;
    if (m.k === "comment" && typeof m.t === "string") {
      stats.comments.push(m.t);
      if (stats.comments.length > MAX_KEEP) stats.comments.shift();
      const li = document.createElement("li");
      const who = document.createElement("span");
      who.className = "who";
      who.textContent = m.f || m.r || "";
      li.append(who, document.createTextNode(m.t));
      const list = $("comments");
      list.appendChild(li);
      while (list.children.length > MAX_KEEP) list.firstChild.remove();
      list.scrollTop = list.scrollHeight;
    } else if (m.k === "system" && m.x && m.x.layout) {
      onLayout(m.x.layout);
    }
  }
  function findGaps() {
    // Priority messages (the layout among them) must not be missed: NACK gaps like
    // sfu.client.data.DataChannel (first after 30 ms, then every 100 ms, 5 times).
    if (prio.start === null) return;
    const now = performance.now();
    for (let pi = Math.max(prio.start, prio.top - 1023); pi <= prio.top; pi++) {
      if (!prio.seen.has(pi) && !prio.missing.has(pi)) prio.missing.set(pi, { due: now + 30, tries: 0 });
    }
    for (const pi of prio.seen) if (pi < prio.top - 4096) prio.seen.delete(pi);
  }
  function nackTick() {
    const now = performance.now();
    const due = [];
    for (const [pi, m] of prio.missing) {
      if (m.due > now) continue;
      if (m.tries >= 5) { prio.missing.delete(pi); continue; }
      if (due.length < 64) { due.push(pi); m.tries++; m.due = now + 100; }
    }
    if (due.length) { stats.nacks++; send(appPacket(2, new Uint8Array(pack(due)))); }
  }
  function onStatePart(msg) {
    if (!isIndex(msg.v)) return;
    if (msg.layout && typeof msg.layout === "object" && msg.layout.slots) onLayout(msg.layout);
    const v = msg.v;
    if (v < stats.stateVersion) return; // an older resend
    if (msg.parts === undefined) return applyState(v, msg.subs);
    if (!isIndex(msg.parts) || msg.parts > 16 || !isIndex(msg.part) || msg.part >= msg.parts) {
      stats.malformed++;
      return;
    }
    let parts = stateParts.get(v);
    if (!parts) {
      parts = new Map();
      stateParts.set(v, parts);
      if (stateParts.size > 4) stateParts.delete(stateParts.keys().next().value);
    }
    parts.set(msg.part, msg);
    if (parts.size < msg.parts) return;
    const subs = [];
    for (let i = 0; i < msg.parts; i++) if (parts.has(i)) subs.push(...parts.get(i).subs);
    for (const k of stateParts.keys()) if (k <= v) stateParts.delete(k);
    applyState(v, subs);
  }
  const receivers = new Map(); // ssrc -> VideoReceiver | AudioReceiver
  function applyState(v, subs) {
    stats.stateVersion = v;
    const keep = new Set();
    for (const s of subs) {
      if (!s || typeof s.ssrc !== "number") continue;
      const ssrc = s.ssrc >>> 0;
      keep.add(ssrc);
      const old = receivers.get(ssrc);
      if (old && old.track === s.track) continue;
      if (old) old.close();
      const codec = String(s.codec || "").toLowerCase();
      if (s.kind === "audio" && codec === "opus") receivers.set(ssrc, new AudioReceiver(ssrc, s));
      else if (s.kind === "video" && (codec === "vp8" || codec === "h264")) {
        receivers.set(ssrc, new VideoReceiver(ssrc, s, codec));
      }
    }
    for (const [ssrc, r] of receivers) if (!keep.has(ssrc)) { r.close(); receivers.delete(ssrc); }
    stats.subscriptions = receivers.size;
  }

  // -- layout tiles ---------------------------------------------------------------------------
  const tiles = new Map(); // participant -> {el, canvas, label}
  function tile(participant) {
    let t = tiles.get(participant);
    if (!t) {
      const el = document.createElement("div");
      el.className = "tile extra";
      const canvas = document.createElement("canvas");
      canvas.width = 320; canvas.height = 180;
      const label = document.createElement("span");
      label.className = "label";
      label.textContent = participant;
      el.append(canvas, label);
      $("stage").appendChild(el);
      t = { el, canvas, label, ctx: canvas.getContext("2d", { willReadFrequently: true }),
        drawn: 0 };
      tiles.set(participant, t);
    }
    return t;
  }
  function onLayout(layout) {
    if (!layout || !Array.isArray(layout.slots) || layout.slots.length > 64) return;
    if ((layout.version | 0) < (stats.layout.version | 0)) return;
    const frac = (v) => (Number.isFinite(v) ? Math.min(1, Math.max(0, v)) : 0);
    const names = ["participant", "role", "seat", "room", "video", "audio", "muted",
      "x", "y", "w", "h"];
    // Compact slots (arrays, Node._push_layout) or maps with the same names.
    const slots = layout.slots.filter((s) => s && typeof s === "object").map((s) => (
      Array.isArray(s) ? Object.fromEntries(names.map((n, i) => [n, s[i]])) : s));
    stats.layout = { mode: layout.mode, version: layout.version | 0, slots };
    const placed = new Set();
    for (const s of slots) {
      const t = tile(String(s.participant));
      placed.add(String(s.participant));
      t.el.classList.remove("extra");
      Object.assign(t.el.style, { left: `${frac(s.x) * 100}%`, top: `${frac(s.y) * 100}%`,
        width: `${frac(s.w) * 100}%`, height: `${frac(s.h) * 100}%`, display: "" });
      t.label.textContent = `${s.participant} (${s.role})${(s.muted || []).length ? " muted" : ""}`;
    }
    for (const [p, t] of tiles) if (!placed.has(p)) t.el.style.display = "none";
  }

  // -- RTP and media --------------------------------------------------------------------------
  const seqNewer = (a, b) => ((a - b) & 0xffff) !== 0 && ((a - b) & 0xffff) < 0x8000;
  class Unwrap {
    constructor() { this.last = null; this.base = 0; }
    ts(t) {
      if (this.last !== null) {
        const d = (t - this.last) | 0; // signed 32-bit difference
        this.base += d;
      } else this.base = t;
      this.last = t;
      return this.base;
    }
  }
  class AudioReceiver {
    constructor(ssrc, sub) {
      this.ssrc = ssrc; this.track = sub.track; this.participant = String(sub.participant);
      this.pt = sub.pt; this.unwrap = new Unwrap(); this.decoder = null; this.made = -1e9;
    }
    open() {
      // Opus needs no keyframe: after a decode error a fresh decoder takes the next packet
      // (at most one new decoder per 500 ms).
      const now = performance.now();
      if (now - this.made < 500) return;
      this.made = now;
      const decoder = new AudioDecoder({
        output: (data) => { stats.audioFrames++; data.close(); },
        error: (e) => { fail(`audio ${this.participant}`, e); this.decoder = null; },
      });
      decoder.configure({ codec: "opus", sampleRate: 48000, numberOfChannels: 2 });
      this.decoder = decoder;
    }
    packet(p) {
      if (!this.decoder || this.decoder.state === "closed") this.open();
      if (!this.decoder || this.decoder.state !== "configured" || !p.payload.length) return;
      if (this.decoder.decodeQueueSize > 50) return; // a stalled decoder: drop, not queue
      const us = Math.round(this.unwrap.ts(p.ts) * 1e6 / 48000);
      this.decoder.decode(new EncodedAudioChunk({ type: "key", timestamp: us, data: p.payload }));
    }
    close() {
      if (this.decoder && this.decoder.state !== "closed") this.decoder.close();
      this.decoder = null;
    }
  }

  class VideoReceiver {
    constructor(ssrc, sub, codec) {
      this.ssrc = ssrc; this.track = sub.track; this.participant = String(sub.participant);
      this.pt = sub.pt; this.codec = codec; this.frames = new Map(); this.lastEnd = null; this.needKey = true;
      this.lastPli = -1e9; this.unwrap = new Unwrap(); this.decoder = null;
    }
    packet(p) {
      if (this.lastEnd !== null && !seqNewer(p.seq, this.lastEnd)) return; // late or dup
      let f = this.frames.get(p.ts);
      if (!f) {
        f = { pkts: new Map(), end: null };
        this.frames.set(p.ts, f);
        if (this.frames.size > 4) this.dropOldest();
      }
      f.pkts.set(p.seq, p.payload);
      if (p.marker) f.end = p.seq;
      this.tryComplete(p.ts, f);
    }
    dropOldest() {
      const ts = this.frames.keys().next().value;
      this.frames.delete(ts);
      this.lost();
    }
    lost() {
      stats.framesDropped++;
      this.lastEnd = null; // continuity is gone: only a keyframe can restart decoding
      this.needKey = true;
      this.pli();
    }
    pli() {
      const now = performance.now();
      if (now - this.lastPli < 500) return; // RFC 4585 spirit: at most 2 PLIs per second
      this.lastPli = now;
      stats.plis++;
      send(pliPacket(this.ssrc));
    }
    tryComplete(ts, f) {
      if (f.end === null) return;
      let first;
      if (this.lastEnd !== null) first = (this.lastEnd + 1) & 0xffff;
      else {
        first = f.end;
        while (f.pkts.has((first - 1) & 0xffff)) first = (first - 1) & 0xffff;
      }
      const n = ((f.end - first) & 0xffff) + 1;
      if (n > f.pkts.size) return; // a hole: wait (reordering) until dropped as too old
      const payloads = [];
      for (let i = 0; i < n; i++) payloads.push(f.pkts.get((first + i) & 0xffff));
      // Older frames still pending can no longer complete.
      for (const k of [...this.frames.keys()]) {
        if (k === ts) break;
        this.frames.delete(k);
        this.lost();
      }
      this.frames.delete(ts);
      const startKnown = this.lastEnd !== null;
      this.lastEnd = f.end;
      let out;
      try {
        out = this.codec === "vp8" ? depacketizeVp8(payloads, startKnown)
          : depacketizeH264(payloads, startKnown);
      } catch (e) { this.lost(); return; }
      if (!out) { this.lost(); return; }
      this.decode(ts, out.data, out.key);
    }
    decode(ts, data, key) {
      if (this.needKey && !key) { this.pli(); return; } // joined mid-GOP, or after a loss
      if (key && (!this.decoder || this.decoder.state === "closed")) this.configure();
      if (!this.decoder || this.decoder.state !== "configured") return;
      if (this.decoder.decodeQueueSize > 30 && !key) { this.lost(); return; }
      this.needKey = false;
      const us = Math.round(this.unwrap.ts(ts) * 1e6 / 90000);
      try {
        this.decoder.decode(new EncodedVideoChunk({ type: key ? "key" : "delta", timestamp: us, data }));
      } catch (e) { fail(`decode ${this.codec}`, e); this.lost(); }
    }
    configure() {
      const codec = this.codec;
      this.decoder = new VideoDecoder({
        output: (frame) => {
          stats.framesDecoded[codec]++;
          const t = tile(this.participant);
          if (t.canvas.width !== frame.displayWidth || t.canvas.height !== frame.displayHeight) {
            t.canvas.width = frame.displayWidth; t.canvas.height = frame.displayHeight;
          }
          t.ctx.drawImage(frame, 0, 0, t.canvas.width, t.canvas.height);
          frame.close();
          t.drawn++;
        },
        error: (e) => {
          fail(`video ${this.participant} ${codec}`, e);
          this.decoder = null; // a new one at the next keyframe
          this.lost();
        },
      });
      this.decoder.configure({ codec: codec === "vp8" ? "vp8" : "avc1.42e01f",
        optimizeForLatency: true });
    }
    close() {
      if (this.decoder && this.decoder.state !== "closed") this.decoder.close();
      this.decoder = null;
    }
  }

  function concat(chunks) {
    let n = 0;
    for (const c of chunks) n += c.length;
    const out = new Uint8Array(n);
    let pos = 0;
    for (const c of chunks) { out.set(c, pos); pos += c.length; }
    return out;
  }
  // RFC 7741 §4.2: payload descriptor, then VP8 data; keyframe: P bit 0 in the first byte
  // of the frame (RFC 7741 §4.3).
  function depacketizeVp8(payloads, startKnown) {
    const parts = [];
    let key = false;
    payloads.forEach((p, i) => {
      if (!p.length) throw new Error("empty");
      let pos = 1;
      if (p[0] & 0x80) {
        const x = p[1]; pos = 2;
        if (x & 0x80) pos += (p[pos] & 0x80) ? 2 : 1;
        if (x & 0x40) pos += 1;
        if (x & 0x30) pos += 1;
      }
      if (pos >= p.length) throw new Error("vp8 descriptor beyond payload");
      const start = (p[0] & 0x10) && (p[0] & 0x07) === 0;
      if (i === 0) {
        if (!start && !startKnown) throw new Error("frame start missing");
        key = start && (p[pos] & 0x01) === 0;
      }
      parts.push(p.subarray(pos));
    });
    return { data: concat(parts), key };
  }
  // RFC 6184 §5.6-5.8: single NAL, STAP-A, FU-A → Annex-B access unit.
  function depacketizeH264(payloads, startKnown) {
    const sc = new Uint8Array([0, 0, 0, 1]);
    const parts = [];
    let key = false, inFu = false;
    const nal = (type) => { if (type === 5) key = true; };
    payloads.forEach((p, i) => {
      if (!p.length) throw new Error("empty");
      const type = p[0] & 0x1f;
      if (type >= 1 && type <= 23) {
        if (inFu) throw new Error("FU-A not ended");
        parts.push(sc, p); nal(type);
      } else if (type === 24) {
        if (inFu) throw new Error("FU-A not ended");
        let pos = 1;
        while (pos + 2 <= p.length) {
          const size = (p[pos] << 8) | p[pos + 1];
          pos += 2;
          if (!size || pos + size > p.length) throw new Error("STAP-A unit beyond payload");
          parts.push(sc, p.subarray(pos, pos + size)); nal(p[pos] & 0x1f);
          pos += size;
        }
      } else if (type === 28) {
        if (p.length < 3) throw new Error("short FU-A");
        const h = p[1];
        if (h & 0x80) {
          if (inFu) throw new Error("FU-A restarted");
          parts.push(sc, new Uint8Array([(p[0] & 0xe0) | (h & 0x1f)])); nal(h & 0x1f);
          inFu = true;
        } else if (!inFu) {
          if (i === 0 && !startKnown) throw new Error("frame start missing");
          throw new Error("FU-A without start");
        }
        parts.push(p.subarray(2));
        if (h & 0x40) inFu = false;
      } else throw new Error(`NAL type ${type}`);
    });
    if (inFu) throw new Error("FU-A not ended");
    return { data: concat(parts), key };
  }

  function onRtp(d) {
    stats.rtp++;
    if (d.length < 12 || d[0] >> 6 !== 2) return;
    const cc = d[0] & 0x0f;
    let pos = 12 + cc * 4;
    if (d[0] & 0x10) {
      if (pos + 4 > d.length) return;
      pos += 4 + ((d[pos + 2] << 8) | d[pos + 3]) * 4;
    }
    let end = d.length;
    if (d[0] & 0x20) end -= d[end - 1];
    if (pos > end) return;
    const dv = new DataView(d.buffer, d.byteOffset, d.byteLength);
    const ssrc = dv.getUint32(8);
    const r = receivers.get(ssrc);
    if (!r) return; // RTX/FEC or not (yet) in STATE
    if (typeof r.pt === "number" && (d[1] & 0x7f) !== r.pt) return; // e.g. ULPFEC, same SSRC
    r.packet({ seq: dv.getUint16(2), ts: dv.getUint32(4), marker: !!(d[1] & 0x80),
      payload: d.slice(pos, end) });
  }
  function onDatagram(d) {
    stats.datagrams++;
    if (d.length < 2) return;
    if (d[1] >= 192 && d[1] <= 223) onRtcp(d); // RFC 5761 §4
    else onRtp(d);
  }

  // -- transport ------------------------------------------------------------------------------
  let writer = null;
  function send(bytes) {
    if (!writer) return;
    writer.write(bytes).catch((e) => fail("send", e));
  }
  function hexBytes(hex) {
    if (!/^[0-9a-fA-F]{64}$/.test(hex)) throw new Error("cert_sha256 must be 64 hex characters");
    return new Uint8Array(hex.match(/../g).map((h) => parseInt(h, 16)));
  }
  function tileStats() {
    // What each tile shows: frames drawn, canvas size, mean luma of a coarse sample (a
    // black tile means nothing was drawn), where the layout put it.
    for (const [p, t] of tiles) {
      const { width: w, height: h } = t.canvas;
      let sum = 0, n = 0;
      if (t.drawn) {
        const px = t.ctx.getImageData(0, 0, w, h).data;
        for (let i = 0; i < px.length; i += 4 * 97) {
          sum += 0.299 * px[i] + 0.587 * px[i + 1] + 0.114 * px[i + 2]; n++;
        }
      }
      stats.tiles[p] = { drawn: t.drawn, width: w, height: h, luma: n ? Math.round(sum / n) : 0,
        visible: t.el.style.display !== "none", placed: !t.el.classList.contains("extra") };
    }
  }
  function startReports(url) {
    setInterval(() => {
      stats.reports++;
      tileStats();
      fetch(url, { method: "POST", mode: "no-cors", body: JSON.stringify(stats) }).catch(() => {});
    }, 500);
  }
  async function main() {
    const q = new URLSearchParams(location.search);
    if (q.get("report")) startReports(q.get("report"));
    const room = q.get("room"), participant = q.get("participant"), token = q.get("token");
    if (!room || !participant || !token) {
      throw new Error("the page needs ?room=…&participant=…&token=… in its address");
    }
    if (typeof WebTransport !== "function" || typeof VideoDecoder !== "function") {
      throw new Error("this browser lacks WebTransport or WebCodecs");
    }
    setStatus("fetching config.json");
    const res = await fetch("config.json", { cache: "no-store" });
    if (!res.ok) throw new Error(`config.json: HTTP ${res.status}`);
    const config = await res.json();
    const url = new URL(config.webtransport);
    url.search = new URLSearchParams({ room, participant, token }).toString();
    const options = config.cert_sha256
      ? { serverCertificateHashes: [{ algorithm: "sha-256", value: hexBytes(config.cert_sha256) }] }
      : {};
    setStatus(`connecting to ${url.origin}`);
    const wt = new WebTransport(url.toString(), options);
    wt.closed.then((info) => {
      stats.connected = false;
      setStatus(`closed${info && info.reason ? `: ${info.reason}` : ""}`, true);
    }, (e) => {
      if (!stats.connected) return; // never opened: main() reports why
      stats.connected = false;
      fail("session", e);
      setStatus(`session failed: ${e.message || e}`, true);
    });
    await wt.ready;
    stats.connected = true;
    setStatus(`watching room ${room} as ${participant}`);
    writer = wt.datagrams.writable.getWriter();
    setInterval(nackTick, 50);
    // An empty receiver report (RFC 3550 §6.4.2) every 10 s: a viewer waiting for a host
    // receives nothing and would send nothing, and the node closes idle sessions (30 s).
    const rrSsrc = (Math.random() * 0xffffffff) >>> 0 || 1;
    const rr = new Uint8Array([0x80, 201, 0, 1, rrSsrc >>> 24, (rrSsrc >>> 16) & 255,
      (rrSsrc >>> 8) & 255, rrSsrc & 255]);
    setInterval(() => send(rr), 10000);
    const reader = wt.datagrams.readable.getReader();
    for (;;) {
      const { value, done } = await reader.read();
      if (done) { fail("session", "the datagram stream ended"); break; }
      try { onDatagram(value); } catch (e) { fail("datagram", e); }
    }
  }
  main().catch((e) => {
    stats.connected = false;
    fail("connect", e);
    setStatus(`error: ${e.message || e}`, true);
  });
})();
