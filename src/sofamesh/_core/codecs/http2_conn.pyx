# HTTP/2 connection core (RFC 9113), sans-IO, both ends: state, the frame reader and the
# frame writers; the public API is codecs/http2.pyx. See http2_conn.pxd for the contract.
#
#   client                                             server
#   "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + SETTINGS  -->
#                                              <--  SETTINGS (+ WINDOW_UPDATE on stream 0)
#   SETTINGS ACK                               -->  <--  SETTINGS ACK
#   HEADERS [+ CONTINUATION...] (odd id)       -->
#   DATA...                                    -->  <--  HEADERS, DATA..., HEADERS (trailers)
#
#   frame: length u24 | type u8 | flags u8 | R + stream id u31 | payload (http2_frames.pyx)
#   DATA        [pad len u8] data [padding]                     END_STREAM 0x1, PADDED 0x8
#   HEADERS     [pad len u8] [E + dep u31, weight u8] block [padding]
#                                       END_STREAM 0x1, END_HEADERS 0x4, PADDED, PRIORITY 0x20
#   PRIORITY    E + dep u31, weight u8 (parsed, ignored as Envoy does)
#   RST_STREAM  error code u32          SETTINGS  (id u16, value u32)*     ACK 0x1
#   PING        8 opaque octets   ACK   GOAWAY    R + last id u31, error u32, debug data
#   WINDOW_UPDATE  R + increment u31    CONTINUATION  block fragment       END_HEADERS
#   PUSH_PROMISE   refused: we advertise ENABLE_PUSH 0 and never accept one

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE
from libc.string cimport memcmp

from sofamesh._core.codecs.hpack cimport (
    HPACK_E_HEADER_TOO_LARGE, HPACK_E_LIMIT, HPACK_E_LIST_TOO_LARGE, HPACK_E_TRUNCATED,
)
from sofamesh._core.codecs.http2_frames cimport *
from sofamesh._core.codecs.http2_events cimport (
    ConnectionError, GoAway, InformationalResponse, PingAcked, PingReceived, RequestHeaders,
    SettingsAcked, SettingsReceived, Trailers, new_data, new_request_headers,
    new_response_headers, new_stream_reset, new_window_updated,
)
from sofamesh._core.codecs.http2_streams cimport (
    ACT_OK, ACT_PROTOCOL, IN_RECV_DATA, IN_RECV_END_STREAM, IN_RECV_HEADERS, IN_RECV_RST,
    IN_SEND_END_STREAM, ST_CLOSED, ST_HALF_CLOSED_LOCAL, ST_OPEN, new_stream, transition,
    validate_request, validate_response, validate_trailers,
)

from sofamesh._core.codecs.http2_frames import PREFACE

cdef bytes _PREFACE = PREFACE
cdef int GONE_KEEP = 1024           # closed streams remembered for late frames


cdef class ConnectionCore:
    # configured by codecs/http2.pyx Connection.__init__ (Envoy's knobs)

    # -- input -------------------------------------------------------------------------

    cpdef list feed(self, object data):
        cdef list events
        cdef bytes b
        cdef Py_ssize_t used, n
        if self._phase != PHASE_CLOSED and data:
            if self._inbuf is None and type(data) is bytes:
                b = <bytes>data
                n = PyBytes_GET_SIZE(b)
                used = self._process(<const unsigned char*>PyBytes_AS_STRING(b), n)
                if used < n and self._phase != PHASE_CLOSED:
                    self._inbuf = bytearray(b[used:])
            else:
                if self._inbuf is None:
                    self._inbuf = bytearray(data)
                else:
                    self._inbuf += data
                n = PyByteArray_GET_SIZE(self._inbuf)
                used = self._process(<const unsigned char*>PyByteArray_AS_STRING(self._inbuf), n)
                if used >= n or self._phase == PHASE_CLOSED:
                    self._inbuf = None
                elif used:
                    del self._inbuf[:used]
        events = self._events
        self._events = []
        return events

    cdef Py_ssize_t _process(self, const unsigned char* p, Py_ssize_t n) except -1:
        cdef Py_ssize_t off = 0, m
        cdef unsigned int length
        if self._phase == PHASE_PREFACE:
            m = min(n, PREFACE_LEN - self._preface_seen)
            if memcmp(p, PyBytes_AS_STRING(_PREFACE) + self._preface_seen, m) != 0:
                self._conn_error(ERR_PROTOCOL_ERROR, "bad connection preface")
                return n
            self._preface_seen += m
            off = m
            if self._preface_seen < PREFACE_LEN:
                return off
            self._phase = PHASE_SETTINGS
        while self._phase != PHASE_CLOSED and n - off >= FRAME_HEADER_LEN:
            length = rd_u24(p + off)
            if length > self._max_inbound_frame:
                self._conn_error(ERR_FRAME_SIZE_ERROR, "frame larger than SETTINGS_MAX_FRAME_SIZE")
                return n
            if n - off < FRAME_HEADER_LEN + length:
                # the checks _frame makes first, in its order, so that how the bytes were cut
                # never changes which error a connection gets
                if self._phase == PHASE_SETTINGS and (p[off + 3] != FT_SETTINGS or
                                                      p[off + 4] & FLAG_ACK):
                    self._conn_error(ERR_PROTOCOL_ERROR, "first frame is not SETTINGS")
                    return n
                if self._cont_sid and p[off + 3] != FT_CONTINUATION:
                    self._conn_error(ERR_PROTOCOL_ERROR, "expected CONTINUATION")
                    return n
                if _fixed_length_wrong(p[off + 3], length):
                    # no need to wait for a payload that cannot be right (Envoy does not)
                    self._conn_error(ERR_FRAME_SIZE_ERROR, "frame length")
                    return n
                break
            self._frame(p[off + 3], p[off + 4], rd_u32(p + off + 5) & 0x7fffffff,
                        p + off + FRAME_HEADER_LEN, length)
            off += FRAME_HEADER_LEN + length
        return off

    cdef int _frame(self, unsigned char ftype, unsigned char flags, unsigned int sid,
                    const unsigned char* p, Py_ssize_t n) except -1:
        if self._phase == PHASE_SETTINGS:
            if ftype != FT_SETTINGS or flags & FLAG_ACK:
                return self._conn_error(ERR_PROTOCOL_ERROR, "first frame is not SETTINGS")
            self._phase = PHASE_OPEN
        if self._cont_sid and ftype != FT_CONTINUATION:
            return self._conn_error(ERR_PROTOCOL_ERROR, "expected CONTINUATION")
        if ftype == FT_DATA:
            return self._on_data(flags, sid, p, n)
        if ftype == FT_HEADERS:
            return self._on_headers(flags, sid, p, n)
        if ftype == FT_CONTINUATION:
            return self._on_continuation(flags, sid, p, n)
        if ftype == FT_WINDOW_UPDATE:
            return self._on_window_update(sid, p, n)
        if ftype == FT_RST_STREAM:
            return self._on_rst_stream(sid, p, n)
        if ftype == FT_SETTINGS:
            return self._on_settings(flags, sid, p, n)
        if ftype == FT_PING:
            return self._on_ping(flags, sid, p, n)
        if ftype == FT_GOAWAY:
            return self._on_goaway(sid, p, n)
        if ftype == FT_PRIORITY:
            return self._on_priority(sid, p, n)
        if ftype == FT_PUSH_PROMISE:
            return self._conn_error(ERR_PROTOCOL_ERROR, "PUSH_PROMISE refused")
        return 0  # unknown frame types are ignored (RFC 9113 5.5)

    cdef int _empty_frame(self, bint empty) except -1:
        if not empty:
            self._empty_frames = 0
            return 0
        self._empty_frames += 1
        if self._empty_frames > self.max_consecutive_inbound_frames_with_empty_payload:
            self.c.inbound_empty_frames_flood += 1
            return self._conn_error(ERR_ENHANCE_YOUR_CALM, "inbound_empty_frames_flood")
        return 0

    cdef bint _is_local_id(self, unsigned int sid) noexcept:
        return (sid & 1) == (1 if self.client_side else 0)

    cdef int _late_frame(self, unsigned int sid, bint data) except -1:
        """A DATA or HEADERS frame for a stream we do not hold."""
        if self._is_local_id(sid):
            if sid >= self._next_local_id:
                return self._conn_error(ERR_PROTOCOL_ERROR, "frame on an idle stream")
        elif sid > self._highest_remote_id:
            if data or self.client_side:
                return self._conn_error(ERR_PROTOCOL_ERROR, "frame on an idle stream")
        # a closed stream (reset either way, or ended both ways): ignored, as Envoy 1.40
        # does (RFC 9113 5.1 would answer STREAM_CLOSED; tests/integration/http2/
        # test_conformance.py 5.1/9-12)
        return 0

    cdef int _on_data(self, unsigned char flags, unsigned int sid,
                      const unsigned char* p, Py_ssize_t n) except -1:
        cdef Py_ssize_t dlen = n, off = 0
        cdef Stream s
        cdef int act
        cdef bint end = flags & FLAG_END_STREAM
        if sid == 0:
            return self._conn_error(ERR_PROTOCOL_ERROR, "DATA on stream 0")
        if flags & FLAG_PADDED:
            if n < 1 or p[0] >= n:
                return self._conn_error(ERR_PROTOCOL_ERROR, "padding longer than DATA")
            off = 1
            dlen = n - 1 - p[0]
        if n > self._conn_recv_window:
            return self._conn_error(ERR_FLOW_CONTROL_ERROR, "connection window exceeded")
        self._conn_recv_window -= n
        self._empty_frame(dlen == 0 and not end)
        if self._phase == PHASE_CLOSED:
            return 0
        s = self._streams.get(sid)
        if s is None:
            self._give_back(None, n)   # nobody will consume these bytes
            return self._late_frame(sid, True)
        act = transition(s, IN_RECV_DATA)
        if act != ACT_OK:
            self._give_back(None, n)
            if act == ACT_PROTOCOL:
                return self._conn_error(ERR_PROTOCOL_ERROR, "DATA in this stream state")
            # Envoy ends the connection (the RFC asks for a stream error): conformance 5.1/5
            return self._conn_error(ERR_STREAM_CLOSED, "DATA after END_STREAM")
        if not s.got_headers:
            self._give_back(None, n)
            self.c.rx_messaging_error += 1
            return self._stream_error(sid, s, ERR_PROTOCOL_ERROR, "DATA before HEADERS")
        if n > s.recv_window:
            self._give_back(None, n)
            return self._stream_error(sid, s, ERR_FLOW_CONTROL_ERROR, "stream window exceeded")
        s.recv_window -= n
        s.data_received += dlen
        if s.content_length >= 0 and (s.data_received > s.content_length or (
                end and s.data_received != s.content_length)):
            self._give_back(None, n)
            self.c.rx_messaging_error += 1
            return self._stream_error(sid, s, ERR_PROTOCOL_ERROR,
                                      "DATA does not match content-length")
        if n > dlen:
            self._give_back(s, n - dlen)
        self._events.append(new_data(
            sid, PyBytes_FromStringAndSize(<const char*>p + off, dlen), end, n))
        if end:
            self._end_remote(s)
        return 0

    cdef int _on_headers(self, unsigned char flags, unsigned int sid,
                         const unsigned char* p, Py_ssize_t n) except -1:
        cdef Py_ssize_t off = 0, pad = 0, frag
        cdef bint selfdep = False
        if sid == 0:
            return self._conn_error(ERR_PROTOCOL_ERROR, "HEADERS on stream 0")
        if flags & FLAG_PADDED:
            if n < 1:
                return self._conn_error(ERR_FRAME_SIZE_ERROR, "HEADERS too short")
            pad = p[0]
            off = 1
        if flags & FLAG_PRIORITY:
            if n - off < 5:
                return self._conn_error(ERR_FRAME_SIZE_ERROR, "HEADERS too short")
            selfdep = (rd_u32(p + off) & 0x7fffffff) == sid
            off += 5
        if pad > n - off:
            return self._conn_error(ERR_PROTOCOL_ERROR, "padding longer than HEADERS")
        frag = n - off - pad
        if not (flags & FLAG_END_HEADERS):
            self._empty_frame(frag == 0)
            if self._phase == PHASE_CLOSED:
                return 0
            if frag > self.max_header_block_size:
                self.c.continuation_flood += 1
                self.c.header_list_size_too_large += 1
                return self._conn_error(ERR_ENHANCE_YOUR_CALM, "header block too large")
            self._cont_sid = sid
            self._cont_end_stream = flags & FLAG_END_STREAM
            self._cont_selfdep = selfdep
            self._cont_block = bytearray(frag)
            if frag:
                self._cont_block[:] = (<const char*>p + off)[:frag]
            return 0
        self._empty_frame(False)
        return self._on_header_block(sid, flags & FLAG_END_STREAM, selfdep, p + off, frag)

    cdef int _on_continuation(self, unsigned char flags, unsigned int sid,
                              const unsigned char* p, Py_ssize_t n) except -1:
        cdef bytearray block
        if self._cont_sid == 0 or sid != self._cont_sid:
            return self._conn_error(ERR_PROTOCOL_ERROR, "unexpected CONTINUATION")
        if n:
            self._cont_block += (<const char*>p)[:n]
        # CVE-2024-27316: a block past max_header_block_size resets its stream and is only
        # decoded (piece by piece, nothing kept) to keep HPACK in step, as Envoy does
        if (self._cont_discard
                or PyByteArray_GET_SIZE(self._cont_block) > self.max_header_block_size):
            return _discard_block(self, sid, flags & FLAG_END_HEADERS, n == 0)
        if not (flags & FLAG_END_HEADERS):
            return self._empty_frame(n == 0)
        self._empty_frame(False)
        block = self._cont_block
        self._cont_block = None
        self._cont_sid = 0
        return self._on_header_block(
            sid, self._cont_end_stream, self._cont_selfdep,
            <const unsigned char*>PyByteArray_AS_STRING(block), PyByteArray_GET_SIZE(block))

    cdef int _on_header_block(self, unsigned int sid, bint end_stream, bint selfdep,
                              const unsigned char* p, Py_ssize_t n) except -1:
        cdef list headers = []
        cdef int rc, act, status = 0
        cdef long long cl = -1
        cdef Stream s
        cdef RequestHeaders req
        cdef InformationalResponse info
        cdef Trailers tr
        cdef str why
        # always decoded, even for a stream we drop: the HPACK table must stay in step
        rc = self._dec.decode_block(p, n, headers)
        if rc < 0 and rc > HPACK_E_LIMIT:
            return self._conn_error(ERR_COMPRESSION_ERROR, "HPACK: %d" % rc)
        s = self._streams.get(sid)
        if s is None:
            if self.client_side or self._is_local_id(sid) or sid <= self._highest_remote_id:
                return self._late_frame(sid, False)
            # a new stream from the client
            if self.goaway_sent and sid > self._goaway_last_id:
                return 0
            self._highest_remote_id = sid
            self._remote_opened_total += 1
            if self._remote_open >= <int>min(self._local_max_concurrent, 0x7fffffff):
                if SETTINGS_MAX_CONCURRENT_STREAMS in self._local_settings:
                    # the peer acknowledged the limit and broke it: Envoy 1.40 ends the
                    # connection (conformance 5.1.2/1)
                    return self._conn_error(ERR_PROTOCOL_ERROR, "max_concurrent_streams")
                self.c.stream_refused_errors += 1
                return self._stream_error(sid, None, ERR_REFUSED_STREAM,
                                          "max_concurrent_streams")
            s = new_stream(sid, True, self._remote_iws, self._local_iws)
            self._streams[sid] = s
            self._remote_open += 1
            transition(s, IN_RECV_HEADERS)
            if rc:
                return _header_limit(self, sid, s, rc)
            if selfdep:
                return self._conn_error(ERR_PROTOCOL_ERROR, "stream depends on itself")
            req = new_request_headers(sid, headers, end_stream)
            why = validate_request(headers, req)
            if why is None and req.protocol is not None and not self.allow_connect:
                # RFC 8441 section 3: not advertised, so a malformed request
                why = ":protocol without SETTINGS_ENABLE_CONNECT_PROTOCOL"
            if why is None and end_stream and req.content_length > 0:
                why = "content-length without DATA"
            if why is not None:
                return _messaging_error(self, why)
            s.got_headers = True
            s.content_length = req.content_length
            self._events.append(req)
            if end_stream:
                self._end_remote(s)
            return 0
        act = transition(s, IN_RECV_HEADERS)
        if act != ACT_OK:
            if act == ACT_PROTOCOL:
                return self._conn_error(ERR_PROTOCOL_ERROR, "HEADERS in this stream state")
            return self._conn_error(ERR_STREAM_CLOSED, "HEADERS after END_STREAM")
        if rc:
            return _header_limit(self, sid, s, rc)
        if selfdep:
            return self._conn_error(ERR_PROTOCOL_ERROR, "stream depends on itself")
        if not s.got_headers:
            why = validate_response(headers, &status, &cl)
            if why is None and status < 200 and (end_stream or status == 101):
                why = "1xx ending the stream, or 101"
            if why is not None:
                return _messaging_error(self, why)
            if status < 200:
                info = InformationalResponse.__new__(InformationalResponse)
                info.stream_id = sid
                info.headers = headers
                info.status = status
                self._events.append(info)
                return 0
            s.got_headers = True
            # no body may follow: HEAD, 204, 304 (content-length describes another body)
            s.content_length = 0 if (s.head_request or status == 204 or status == 304) else cl
            if end_stream and s.content_length > 0:
                return _messaging_error(self, "content-length without DATA")
            self._events.append(new_response_headers(sid, headers, end_stream, status, cl))
        else:
            why = "trailers without END_STREAM" if not end_stream else validate_trailers(headers)
            if why is not None:
                return _messaging_error(self, why)
            if s.content_length >= 0 and s.data_received != s.content_length:
                self.c.rx_messaging_error += 1
                return self._stream_error(sid, s, ERR_PROTOCOL_ERROR,
                                          "DATA does not match content-length")
            self.c.trailers += 1
            tr = Trailers.__new__(Trailers)
            tr.stream_id = sid
            tr.headers = headers
            self._events.append(tr)
        if end_stream:
            self._end_remote(s)
        return 0

    cdef int _on_priority(self, unsigned int sid, const unsigned char* p,
                          Py_ssize_t n) except -1:
        # Envoy 1.40 ignores PRIORITY but for its length: no check of stream 0 or of a
        # self-dependency (conformance 5.3.1/2, 6.3/1, 6.3/2)
        if n != 5:
            return self._conn_error(ERR_FRAME_SIZE_ERROR, "PRIORITY length")
        self._priority_in += 1
        if self._priority_in > <unsigned long long>self.max_inbound_priority_frames_per_stream * (
                1 + self._remote_opened_total):
            self.c.inbound_priority_frames_flood += 1
            return self._conn_error(ERR_ENHANCE_YOUR_CALM, "inbound_priority_frames_flood")
        return 0

    cdef int _on_rst_stream(self, unsigned int sid, const unsigned char* p,
                            Py_ssize_t n) except -1:
        cdef Stream s
        if sid == 0:
            return self._conn_error(ERR_PROTOCOL_ERROR, "RST_STREAM on stream 0")
        if n != 4:
            return self._conn_error(ERR_FRAME_SIZE_ERROR, "RST_STREAM length")
        s = self._streams.get(sid)
        if s is None:
            if (sid >= self._next_local_id if self._is_local_id(sid)
                    else sid > self._highest_remote_id):
                return self._conn_error(ERR_PROTOCOL_ERROR, "RST_STREAM on an idle stream")
            return 0
        self.c.rx_reset += 1
        transition(s, IN_RECV_RST)
        if s.remote_initiated and not s.sent_headers:
            self._premature_resets += 1
        self._events.append(new_stream_reset(sid, rd_u32(p), True, None))
        self._close_stream(s, GONE_RESET_RECV)
        # CVE-2023-44487 (rapid reset): most streams reset by the client before any answer
        if (self._remote_closed_total >= <unsigned long long>self.premature_reset_total_stream_count
                and self._premature_resets * 2 >= self._remote_closed_total):
            self.c.too_many_premature_resets += 1
            return self._conn_error(ERR_ENHANCE_YOUR_CALM, "too_many_premature_resets")
        return 0

    cdef int _on_settings(self, unsigned char flags, unsigned int sid,
                          const unsigned char* p, Py_ssize_t n) except -1:
        cdef Py_ssize_t i
        cdef unsigned int ident, v
        cdef long long delta
        cdef dict changed, acked
        cdef Stream s
        cdef SettingsAcked ack
        cdef SettingsReceived got
        if sid != 0:
            return self._conn_error(ERR_PROTOCOL_ERROR, "SETTINGS on a stream")
        if flags & FLAG_ACK:
            if n != 0:
                return self._conn_error(ERR_FRAME_SIZE_ERROR, "SETTINGS ACK with payload")
            if not self._pending_local:
                return self._conn_error(ERR_PROTOCOL_ERROR, "unexpected SETTINGS ACK")
            acked = self._pending_local.pop(0)
            for ident, v in acked.items():
                if ident == SETTINGS_INITIAL_WINDOW_SIZE:
                    delta = <long long>v - self._local_iws
                    self._local_iws = v
                    for s in self._streams.values():
                        s.recv_window += delta
                elif ident == SETTINGS_HEADER_TABLE_SIZE:
                    self._dec.set_allowed_table_size(v)
                elif ident == SETTINGS_MAX_FRAME_SIZE:
                    self._max_inbound_frame = v
            self._local_settings.update(acked)
            ack = SettingsAcked.__new__(SettingsAcked)
            ack.changed = acked
            self._events.append(ack)
            return 0
        if n % 6:
            return self._conn_error(ERR_FRAME_SIZE_ERROR, "SETTINGS length")
        changed = {}
        for i in range(0, n, 6):
            ident = (p[i] << 8) | p[i + 1]
            v = rd_u32(p + i + 2)
            if ident == SETTINGS_ENABLE_PUSH:
                if v > 1 or (v == 1 and self.client_side):
                    return self._conn_error(ERR_PROTOCOL_ERROR, "bad SETTINGS_ENABLE_PUSH")
            elif ident == SETTINGS_INITIAL_WINDOW_SIZE:
                if v > MAX_WINDOW:
                    return self._conn_error(ERR_FLOW_CONTROL_ERROR,
                                            "SETTINGS_INITIAL_WINDOW_SIZE over 2^31-1")
                delta = <long long>v - self._remote_iws
                self._remote_iws = v
                over = []
                for s in self._streams.values():
                    s.send_window += delta
                    if s.send_window > MAX_WINDOW:
                        over.append(s)
                # Envoy resets those streams (FLOW_CONTROL_ERROR); the RFC would end the
                # connection (conformance 6.9.2/4)
                for s in over:
                    self._stream_error(s.stream_id, s, ERR_FLOW_CONTROL_ERROR,
                                       "stream window overflow")
            elif ident == SETTINGS_MAX_FRAME_SIZE:
                if v < DEFAULT_MAX_FRAME or v > MAX_MAX_FRAME:
                    return self._conn_error(ERR_PROTOCOL_ERROR, "bad SETTINGS_MAX_FRAME_SIZE")
                self._remote_max_frame = v
            elif ident == SETTINGS_MAX_CONCURRENT_STREAMS:
                self._remote_max_concurrent = v
            elif ident == SETTINGS_HEADER_TABLE_SIZE:
                self._enc.set_max_table_size(min(v, self._table_size_cap))
            elif ident == SETTINGS_MAX_HEADER_LIST_SIZE:
                self._remote_max_header_list = v
            elif (ident == SETTINGS_ENABLE_CONNECT_PROTOCOL
                  or ident == SETTINGS_NO_RFC7540_PRIORITIES):
                if v > 1:
                    return self._conn_error(ERR_PROTOCOL_ERROR, "bad boolean SETTINGS value")
            else:
                continue  # unknown settings are ignored
            changed[ident] = v
        self._remote_settings.update(changed)
        self._out.header(0, FT_SETTINGS, FLAG_ACK, 0)
        self._control_written()
        got = SettingsReceived.__new__(SettingsReceived)
        got.changed = changed
        self._events.append(got)
        if SETTINGS_INITIAL_WINDOW_SIZE in changed:
            self._flush_blocked()
        return 0

    cdef int _on_ping(self, unsigned char flags, unsigned int sid,
                      const unsigned char* p, Py_ssize_t n) except -1:
        cdef PingAcked pa
        cdef PingReceived pr
        if sid != 0:
            return self._conn_error(ERR_PROTOCOL_ERROR, "PING on a stream")
        if n != 8:
            return self._conn_error(ERR_FRAME_SIZE_ERROR, "PING length")
        if flags & FLAG_ACK:
            pa = PingAcked.__new__(PingAcked)
            pa.data = PyBytes_FromStringAndSize(<const char*>p, 8)
            self._events.append(pa)
            return 0
        self._out.header(8, FT_PING, FLAG_ACK, 0)
        self._out.put(p, 8)
        pr = PingReceived.__new__(PingReceived)
        pr.data = PyBytes_FromStringAndSize(<const char*>p, 8)
        self._events.append(pr)
        return self._control_written()

    cdef int _on_goaway(self, unsigned int sid, const unsigned char* p,
                        Py_ssize_t n) except -1:
        cdef GoAway g
        cdef Stream s
        cdef unsigned int last
        if sid != 0:
            return self._conn_error(ERR_PROTOCOL_ERROR, "GOAWAY on a stream")
        if n < 8:
            return self._conn_error(ERR_FRAME_SIZE_ERROR, "GOAWAY length")
        last = rd_u32(p) & 0x7fffffff
        if last and not self._is_local_id(last):
            # the last id counts streams the receiver (we) opened; one of the peer's own
            # ids there ends the connection, as Envoy 1.40 does (conformance 6.8/3)
            return self._conn_error(ERR_PROTOCOL_ERROR, "GOAWAY names a stream of its sender")
        g = GoAway.__new__(GoAway)
        g.last_stream_id = last
        g.error_code = rd_u32(p + 4)
        g.debug_data = PyBytes_FromStringAndSize(<const char*>p + 8, n - 8)
        self.goaway_received = True
        self._remote_goaway_last_id = g.last_stream_id
        self._events.append(g)
        # our streams above last_stream_id were never processed: safe to retry elsewhere
        for s in list(self._streams.values()):
            if not s.remote_initiated and s.stream_id > g.last_stream_id:
                self._events.append(new_stream_reset(s.stream_id, ERR_REFUSED_STREAM, True,
                                                     "goaway"))
                self._close_stream(s, GONE_RESET_RECV)
        return 0

    cdef int _on_window_update(self, unsigned int sid, const unsigned char* p,
                               Py_ssize_t n) except -1:
        cdef unsigned int inc
        cdef Stream s
        if n != 4:
            return self._conn_error(ERR_FRAME_SIZE_ERROR, "WINDOW_UPDATE length")
        inc = rd_u32(p) & 0x7fffffff
        self._window_updates_in += 1
        if self._window_updates_in > 10 + 2 * self._remote_opened_total + (
                <unsigned long long>self.max_inbound_window_update_frames_per_data_frame_sent
                * (self._data_frames_out + 1)):
            self.c.inbound_window_update_frames_flood += 1
            return self._conn_error(ERR_ENHANCE_YOUR_CALM, "inbound_window_update_frames_flood")
        if sid == 0:
            if inc == 0:
                return self._conn_error(ERR_PROTOCOL_ERROR, "WINDOW_UPDATE of 0")
            self._conn_send_window += inc
            if self._conn_send_window > MAX_WINDOW:
                return self._conn_error(ERR_FLOW_CONTROL_ERROR, "connection window overflow")
            self._events.append(new_window_updated(0, inc))
            return self._flush_blocked()
        s = self._streams.get(sid)
        if s is None:
            if (sid >= self._next_local_id if self._is_local_id(sid)
                    else sid > self._highest_remote_id):
                return self._conn_error(ERR_PROTOCOL_ERROR, "WINDOW_UPDATE on an idle stream")
            return 0
        # Envoy ends the connection for both (the RFC asks for stream errors): 6.9/2, 6.9.1/2
        if inc == 0:
            return self._conn_error(ERR_PROTOCOL_ERROR, "WINDOW_UPDATE of 0")
        s.send_window += inc
        if s.send_window > MAX_WINDOW:
            return self._conn_error(ERR_FLOW_CONTROL_ERROR, "stream window overflow")
        self._events.append(new_window_updated(sid, inc))
        if s.pending_bytes or s.pending_end:
            self._flush_stream(s)
            return self._check_outbound()
        return 0

    # -- errors and bookkeeping --------------------------------------------------------

    cdef int _conn_error(self, unsigned int code, str reason) except -1:
        cdef ConnectionError ev
        cdef bytes debug
        if self._phase == PHASE_CLOSED:
            return 0
        self._phase = PHASE_CLOSED
        self.c.connection_errors += 1
        debug = reason.encode()
        self._out.header(8 + PyBytes_GET_SIZE(debug), FT_GOAWAY, 0, 0)
        self._out.put_u32(self._highest_remote_id)
        self._out.put_u32(code)
        self._out.put(<const unsigned char*>PyBytes_AS_STRING(debug), PyBytes_GET_SIZE(debug))
        self.goaway_sent = True
        self.c.goaway_sent += 1
        ev = ConnectionError.__new__(ConnectionError)
        ev.error_code = code
        ev.reason = reason
        self._events.append(ev)
        return 0

    cdef int _stream_error(self, unsigned int sid, Stream s, unsigned int code,
                           str reason) except -1:
        self.c.stream_errors += 1
        self.c.tx_reset += 1
        self._out.header(4, FT_RST_STREAM, 0, sid)
        self._out.put_u32(code)
        if s is not None:
            # the driver saw this stream (or opened it): tell it
            if s.got_headers or not s.remote_initiated:
                self._events.append(new_stream_reset(sid, code, False, reason))
            s.state = ST_CLOSED
            self._close_stream(s, GONE_RESET_SENT)
        else:
            self._gone[sid] = GONE_RESET_SENT
        return self._control_written()

    cdef int _close_stream(self, Stream s, int how) except -1:
        cdef unsigned int sid = s.stream_id
        if self._streams.pop(sid, None) is None:
            return 0
        s.state = ST_CLOSED
        if s.remote_initiated:
            self._remote_open -= 1
            self._remote_closed_total += 1
        else:
            self._local_open -= 1
        s.pending = None
        s.pending_bytes = 0
        s.pending_end = False
        self._blocked.pop(sid, None)
        self._gone[sid] = how
        if len(self._gone) > GONE_KEEP:
            del self._gone[next(iter(self._gone))]
        return 0

    cdef int _end_remote(self, Stream s) except -1:
        transition(s, IN_RECV_END_STREAM)
        if s.state == ST_CLOSED:
            self._close_stream(s, GONE_NORMAL)
        return 0

    cdef int _end_local(self, Stream s) except -1:
        s.pending_end = False
        transition(s, IN_SEND_END_STREAM)
        if s.state == ST_CLOSED:
            self._close_stream(s, GONE_NORMAL)
        return 0

    cdef int _give_back(self, Stream s, long long n) except -1:
        """Bytes consumed: WINDOW_UPDATE once half a window is owed (fewer, larger frames)."""
        if n <= 0 or self._phase == PHASE_CLOSED:
            return 0
        self._conn_recv_unacked += n
        if self._conn_recv_unacked * 2 >= self._conn_window_target:
            self._out.header(4, FT_WINDOW_UPDATE, 0, 0)
            self._out.put_u32(<unsigned int>self._conn_recv_unacked)
            self._conn_recv_window += self._conn_recv_unacked
            self._conn_recv_unacked = 0
        if s is not None and (s.state == ST_OPEN or s.state == ST_HALF_CLOSED_LOCAL):
            s.recv_unacked += n
            if s.recv_unacked * 2 >= self._stream_window_target:
                self._out.header(4, FT_WINDOW_UPDATE, 0, s.stream_id)
                self._out.put_u32(<unsigned int>s.recv_unacked)
                s.recv_window += s.recv_unacked
                s.recv_unacked = 0
        return 0

    cdef int _control_written(self) except -1:
        self._out.control_frames += 1
        if self._out.control_frames > self.max_outbound_control_frames:
            self.c.outbound_control_flood += 1
            return self._conn_error(ERR_ENHANCE_YOUR_CALM, "outbound_control_flood")
        return self._check_outbound()

    cdef int _check_outbound(self) except -1:
        if self._out.frames > self.max_outbound_frames:
            self.c.outbound_flood += 1
            return self._conn_error(ERR_ENHANCE_YOUR_CALM, "outbound_flood")
        return 0

    # -- output ------------------------------------------------------------------------

    cdef int _write_settings(self, dict settings) except -1:
        cdef unsigned int ident, v
        self._out.header(6 * len(settings), FT_SETTINGS, 0, 0)
        for ident, v in settings.items():
            self._out.put_u16(ident)
            self._out.put_u32(v)
            if ident == SETTINGS_MAX_CONCURRENT_STREAMS:
                # enforced at once (the peer learns it with this frame); the rest on ACK
                self._local_max_concurrent = v
        self._pending_local.append(settings)
        return self._control_written()

    cdef int _write_headers(self, Stream s, list headers, bint end_stream) except -1:
        cdef bytes block = self._enc.encode_block(headers)
        cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(block)
        cdef Py_ssize_t n = PyBytes_GET_SIZE(block), off, chunk
        cdef unsigned int maxf = self._remote_max_frame
        cdef unsigned char flags = FLAG_END_STREAM if end_stream else 0
        chunk = min(n, maxf)
        self._out.header(chunk, FT_HEADERS, flags | (FLAG_END_HEADERS if chunk == n else 0),
                         s.stream_id)
        self._out.put(p, chunk)
        off = chunk
        while off < n:
            chunk = min(n - off, maxf)
            self._out.header(chunk, FT_CONTINUATION,
                             FLAG_END_HEADERS if off + chunk == n else 0, s.stream_id)
            self._out.put(p + off, chunk)
            off += chunk
        s.sent_headers = True
        return 0

    cdef int _flush_stream(self, Stream s) except -1:
        """Queued DATA out as far as both windows allow; END_STREAM (or the trailers)
        after the last byte."""
        cdef long long room
        cdef Py_ssize_t avail, chunk
        cdef bytes buf
        cdef bint last
        while s.pending_bytes > 0:
            room = min(s.send_window, self._conn_send_window, <long long>self._remote_max_frame)
            if room <= 0:
                self._blocked[s.stream_id] = s
                return 0
            buf = <bytes>s.pending[0]
            avail = PyBytes_GET_SIZE(buf) - s.pending_off
            chunk = <Py_ssize_t>min(<long long>avail, room)
            last = (chunk == s.pending_bytes and s.pending_end
                    and s.pending_trailers is None)
            self._out.header(chunk, FT_DATA, FLAG_END_STREAM if last else 0, s.stream_id)
            self._out.put(<const unsigned char*>PyBytes_AS_STRING(buf) + s.pending_off, chunk)
            self._data_frames_out += 1
            s.send_window -= chunk
            self._conn_send_window -= chunk
            s.pending_bytes -= chunk
            s.pending_off += chunk
            if s.pending_off == PyBytes_GET_SIZE(buf):
                del s.pending[0]
                s.pending_off = 0
            if last:
                return self._end_local(s)
        self._blocked.pop(s.stream_id, None)
        if s.pending_end:
            if s.pending_trailers is not None:
                self._write_headers(s, s.pending_trailers, True)
                s.pending_trailers = None
            else:
                self._out.header(0, FT_DATA, FLAG_END_STREAM, s.stream_id)
            return self._end_local(s)
        return 0

    cdef int _flush_blocked(self) except -1:
        cdef Stream s
        if not self._blocked:
            return 0
        for s in list(self._blocked.values()):
            if self._conn_send_window <= 0:
                break
            if s.state != ST_CLOSED:
                self._flush_stream(s)
        return self._check_outbound()


cdef int _messaging_error(ConnectionCore self, str reason) except -1:
    """A malformed message (RFC 9113 8.1.1): Envoy's default
    (stream_error_on_invalid_http_messaging false, a knob sofamesh does not take) ends the
    whole connection; the RFC's stream error is what that knob would give."""
    self.c.rx_messaging_error += 1
    return self._conn_error(ERR_PROTOCOL_ERROR, reason)


cdef inline bint _fixed_length_wrong(unsigned char ftype, unsigned int length) noexcept:
    """A control frame whose length field is not its type's fixed size."""
    if ftype == FT_PING:
        return length != 8
    if ftype == FT_RST_STREAM or ftype == FT_WINDOW_UPDATE:
        return length != 4
    if ftype == FT_PRIORITY:
        return length != 5
    return False


cdef int _header_limit(ConnectionCore self, unsigned int sid, Stream s, int rc) except -1:
    """A header list over max_request_headers_kb or max_headers_count: the stream is reset
    INTERNAL_ERROR and counted as Envoy 1.40 counts it (http2.header_list_size_too_large
    for the size, http2.header_overflow for the count)."""
    if rc == HPACK_E_LIST_TOO_LARGE or rc == HPACK_E_HEADER_TOO_LARGE:
        self.c.header_list_size_too_large += 1
    else:
        self.c.header_overflow += 1
    return self._stream_error(sid, s, ERR_INTERNAL_ERROR, "header list over the limits")


cdef int _discard_block(ConnectionCore self, unsigned int sid, bint end,
                        bint empty) except -1:
    cdef list junk = []
    cdef Py_ssize_t done = 0
    cdef int rc
    cdef Stream s
    cdef bytearray blk = self._cont_block
    if not self._cont_discard:
        self._cont_discard = True
        self.c.continuation_flood += 1
        self.c.header_list_size_too_large += 1
        s = self._streams.get(sid)
        if (s is None and not self.client_side and not self._is_local_id(sid)
                and sid > self._highest_remote_id):
            # a stream that never opened: it counts as opened, and reset
            self._highest_remote_id = sid
            self._remote_opened_total += 1
        self._stream_error(sid, s, ERR_INTERNAL_ERROR, "header list over the limits")
        if self._phase == PHASE_CLOSED:
            return 0
    if end:
        rc = self._dec.decode_block(<const unsigned char*>PyByteArray_AS_STRING(blk),
                                    PyByteArray_GET_SIZE(blk), junk)
        self._cont_block = None
        self._cont_sid = 0
        self._cont_discard = False
        if rc < 0 and rc > HPACK_E_LIMIT:
            return self._conn_error(ERR_COMPRESSION_ERROR, "HPACK: %d" % rc)
        return 0
    rc = self._dec.decode_block(<const unsigned char*>PyByteArray_AS_STRING(blk),
                                PyByteArray_GET_SIZE(blk), junk, &done)
    if rc < 0 and rc > HPACK_E_LIMIT and rc != HPACK_E_TRUNCATED:
        return self._conn_error(ERR_COMPRESSION_ERROR, "HPACK: %d" % rc)
    del blk[:done]
    if PyByteArray_GET_SIZE(blk) > self.max_header_block_size:
        # one field larger than the whole allowance: no piece to decode
        return self._conn_error(ERR_ENHANCE_YOUR_CALM, "header field too large")
    return self._empty_frame(empty)
