# RPC tracing on the hot path: see rpc_tracing.pxd for the contract, docs/RPC_TRACING.md
# for the conventions read and written (with their sources).
#
#   caller --[ctx: trace T, span R]--> proxy --[ctx: trace T, span C]--> upstream
#                                        |
#             SERVER span (id of R, parent of R)  +  CLIENT span C (parent: R)
#
# SOFATracer ids are rpc ids ("0.1.2": a child of "0.1"); the proxy's upstream call is the
# first child of the caller's ("0.1.2.1"). Zipkin span ids are 64-bit hex: an rpc id maps
# to FNV-1a-64 of its text, as SOFATracer's own Zipkin reporter maps it, except a 16-hex
# id (a B3 span id a SOFATracer app took over from an HTTP caller) which stays itself, so
# an HTTP span's children reached through Bolt and Dubbo apps keep their parent.

from libc.stdio cimport snprintf
from cpython.bytes cimport PyBytes_FromStringAndSize

from posix.time cimport clock_gettime, timespec, CLOCK_REALTIME
import logging
import os

from sofamesh._core.stats cimport Counter
from sofamesh._core.upstream cimport Cluster, Host
from sofamesh._core.codecs.rpcframe cimport RpcFrame, RK_METHOD, RK_SERVICE_ID
from sofamesh._core.codecs.bolt cimport BoltFrame
from sofamesh._core.codecs.dubbo cimport DubboFrame, count_params
from sofamesh._core.codecs.hessian cimport H2Cursor, h2_encode_str

# Bolt header map entries (SOFARPC flattens its request props `rpc_trace_context` map)
cdef str B_TRACE = "rpc_trace_context.sofaTraceId"
cdef str B_RPC = "rpc_trace_context.sofaRpcId"
cdef str B_SAMP = "rpc_trace_context.samp"
cdef str B_NEW = "new_rpc_trace_context"   # SOFARPC >= 5.1 to 5.1+ providers: tcid=..&spid=..
# Dubbo attachments
cdef str D_SOFA = "dubbo.rpc.sofa.tracer"  # SOFATracer's Dubbo filter: tcid=..&spid=..&pspid=..
cdef str D_W3C = "traceparent"
cdef tuple D_B3 = ("X-B3-TraceId", "X-B3-SpanId", "X-B3-ParentSpanId", "X-B3-Sampled")
cdef tuple D_B3_LOWER = tuple(k.lower() for k in D_B3)
cdef frozenset D_KEYS = frozenset((D_SOFA, D_W3C) + D_B3 + D_B3_LOWER)

cdef enum:
    P_BOLT = 1                          # rpc_upstream's P_BOLT (not cimported: it cimports us)

log = logging.getLogger("sofamesh.tracing")

MAX_ID = 256                            # longest trace / rpc id taken from a caller

# own clock and id source: the HTTP modules' (http_common, router) are not cimported, so the
# RPC modules build and load without them
cdef unsigned long long _rng = int.from_bytes(os.urandom(8), "little") | 1


cdef inline unsigned long long rng_next() noexcept:
    """xorshift64*: span ids and sampling draws."""
    global _rng
    _rng ^= _rng >> 12
    _rng ^= _rng << 25
    _rng ^= _rng >> 27
    return _rng * 0x2545F4914F6CDD1DULL


cdef inline long long wall_us() noexcept:
    cdef timespec ts
    clock_gettime(CLOCK_REALTIME, &ts)
    return <long long>ts.tv_sec * 1000000 + ts.tv_nsec // 1000


cdef tuple _DUBBO_KEYS = tuple(sorted(
    k.encode() for k in (D_SOFA, D_W3C) + D_B3 + D_B3_LOWER))


cdef tuple dubbo_trace_keys():
    """The attachments a traced Dubbo listener decodes (rpc_proxy.dubbo_keys adds them)."""
    return _DUBBO_KEYS


cdef str _hex64():
    cdef char buf[17]
    snprintf(buf, 17, "%016llx", rng_next())
    return PyBytes_FromStringAndSize(buf, 16).decode("ascii")


cdef str _fnv(str s):
    """FNV-1a 64 of the text's UTF-16 units, as 16 hex digits (rpc ids are ASCII)."""
    cdef unsigned long long h = 0xcbf29ce484222325ULL
    cdef Py_UCS4 c
    cdef char buf[17]
    for c in s:
        h ^= <unsigned long long>c
        h *= 0x100000001b3ULL
    snprintf(buf, 17, "%016llx", h)
    return PyBytes_FromStringAndSize(buf, 16).decode("ascii")


cdef bint _is_hex(str s, Py_ssize_t lo, Py_ssize_t hi):
    cdef Py_UCS4 c
    if not lo <= len(s) <= hi:
        return False
    for c in s:
        if not (u'0' <= c <= u'9' or u'a' <= c <= u'f' or u'A' <= c <= u'F'):
            return False
    return True


cdef bint _valid_rpc_id(str s):
    """SOFATracer rpc ids: dot-separated alphanumeric parts ("0.1.2", "<b3 span id>.1")."""
    cdef Py_UCS4 c
    cdef bint empty = True
    if not 0 < len(s) <= MAX_ID:
        return False
    for c in s:
        if c == u'.':
            if empty:
                return False
            empty = True
        elif u'0' <= c <= u'9' or u'a' <= c <= u'z' or u'A' <= c <= u'Z':
            empty = False
        else:
            return False
    return not empty


cdef str _zid(str rpc_id):
    """The Zipkin span id of an rpc id."""
    if len(rpc_id) == 16 and _is_hex(rpc_id, 16, 16):
        return rpc_id.lower()
    return _fnv(rpc_id)


cdef str _zipkin_trace(str t):
    """A carried trace id as Zipkin takes it (hex, left-padded to 16 or 32 digits), or
    None if it is not one (SOFATracer ids are hex; a trailing T marks its load tests)."""
    if t.endswith("T"):
        t = t[:len(t) - 1]
    if not _is_hex(t, 1, 32):
        return None
    t = t.lower()
    return t.rjust(16 if len(t) <= 16 else 32, "0")


cdef dict _kv(str s):
    """SOFATracer's serialized span context (k=v&k=v&) as a dict; values unescaped only
    for the keys read here (ids and the sampled flag carry no escapes)."""
    cdef dict out = {}
    for part in s.split("&"):
        k, eq, v = part.partition("=")
        if eq:
            out[k] = v
    return out


cdef str _kv_update(str s, str spid, str pspid):
    """The serialized context with spid / pspid replaced, every other entry as it was."""
    cdef list parts = []
    cdef bint seen_sp = False, seen_psp = False
    for part in s.split("&"):
        if not part:
            continue
        if part.startswith("spid="):
            part = "spid=" + spid
            seen_sp = True
        elif part.startswith("pspid="):
            part = "pspid=" + pspid
            seen_psp = True
        parts.append(part)
    if not seen_sp:
        parts.append("spid=" + spid)
    if not seen_psp:
        parts.append("pspid=" + pspid)
    return "&".join(parts) + "&"


cdef bint _false(object v):
    return v is not None and str(v).strip().lower() in ("false", "0")


cdef class RpcTracing:
    def __init__(self, tracer, int proto, long long ppm, bint id128, bint shared,
                 Counter malformed, Counter started, Counter continued):
        self.tracer = tracer
        self.proto = proto
        self.ppm = ppm
        self.id128 = id128
        self.shared = shared
        self.malformed = malformed
        self.started = started
        self.continued = continued


cdef class RpcSpan:
    pass


cdef int _sofa(RpcSpan s, str tid, str rid, str pspid, object samp) except -2:
    """A SOFATracer context: -1 if malformed (the caller counts it)."""
    s.zipkin_trace = _zipkin_trace(tid) if len(tid) <= MAX_ID else None
    if s.zipkin_trace is None or rid is None or not _valid_rpc_id(rid):
        return -1
    s.trace_id = tid
    s.rpc_id = rid
    s.sampled = not _false(samp)
    s.server_id = _zid(rid)
    if pspid is None or not pspid:
        pspid = rid.rpartition(".")[0]
    if pspid and not _valid_rpc_id(pspid):
        return -1
    s.parent_rpc_id = pspid
    s.server_parent = _zid(pspid) if pspid else None
    s.shared = True
    s.client_rpc_id = rid + ".1"
    s.client_id = _zid(s.client_rpc_id)
    return 0


cdef int _bolt_ctx(RpcSpan s, BoltFrame f) except -2:
    """CTX_* found in a Bolt header map (0 none, -1 malformed)."""
    tid = f.header(B_TRACE)
    if tid is not None:
        s.fmt = CTX_SOFA
        return -1 if _sofa(s, tid, f.header(B_RPC), None, f.header(B_SAMP)) else CTX_SOFA
    v = f.header(B_NEW)
    if v is None:
        return 0
    s.fmt = CTX_SOFA_NEW
    if len(v) > 4096:
        return -1
    kv = _kv(v)
    tid = kv.get("tcid")
    if tid is None:
        return -1
    # no spid: SOFATracer's reader takes the root id, "0"
    return -1 if _sofa(s, tid, kv.get("spid", "0"), kv.get("pspid"), kv.get("sample")) \
        else CTX_SOFA_NEW


cdef object _att(dict a, int i):
    v = a.get(D_B3[i])
    if v is None:
        v = a.get(D_B3_LOWER[i])
    return v if v is None or isinstance(v, str) else str(v)


cdef int _dubbo_ctx(RpcSpan s, DubboFrame f, bint shared) except -2:
    cdef dict a = f.attachments
    if not a:
        return 0
    v = a.get(D_SOFA)
    if v is not None:
        s.fmt = CTX_SOFA_NEW
        if not isinstance(v, str) or len(v) > 4096:
            return -1
        kv = _kv(v)
        tid = kv.get("tcid")
        if tid is None:
            return -1
        return -1 if _sofa(s, tid, kv.get("spid", "0"), kv.get("pspid"), kv.get("sample")) \
            else CTX_SOFA_NEW
    tid = _att(a, 0)
    if tid is not None:
        s.fmt = CTX_B3
        sid = _att(a, 1)
        pid = _att(a, 2)
        if not _is_hex(tid, 16, 32) or len(tid) not in (16, 32) or sid is None \
                or not _is_hex(sid, 16, 16) or (pid is not None and not _is_hex(pid, 16, 16)):
            return -1
        samp = _att(a, 3)
        s.trace_id = tid
        s.zipkin_trace = tid.lower()
        s.sampled = samp is None or samp in ("1", "true", "d")
        s.rpc_id = sid.lower()
        if shared:
            s.server_id = s.rpc_id
            s.server_parent = pid.lower() if pid is not None else None
            s.shared = True
        else:
            s.server_id = _hex64()
            s.server_parent = s.rpc_id
        s.client_id = s.client_rpc_id = _hex64()
        return CTX_B3
    v = a.get(D_W3C)
    if v is None:
        return 0
    s.fmt = CTX_W3C
    # version-traceid-parentid-flags; version ff and all-zero ids are invalid
    parts = v.split("-") if isinstance(v, str) else ()
    if len(parts) < 4 or parts[0] == "ff" or not _is_hex(parts[0], 2, 2) \
            or not _is_hex(parts[1], 32, 32) or not _is_hex(parts[2], 16, 16) \
            or not _is_hex(parts[3], 2, 2) or (parts[0] == "00" and len(parts) != 4) \
            or parts[1].strip("0") == "" or parts[2].strip("0") == "":
        return -1
    s.trace_id = s.zipkin_trace = parts[1].lower()
    s.rpc_id = parts[2].lower()
    s.sampled = (int(parts[3], 16) & 1) != 0
    s.server_id = _hex64()                 # W3C: the receiver's span is a child
    s.server_parent = s.rpc_id
    s.client_id = s.client_rpc_id = _hex64()
    return CTX_W3C


cdef int trace_start(RpcTracing t, object f, object transport) except -1:
    """Reads the call's context; gives it a span (RpcFrame.trace) if it carries one or is
    sampled as a new trace. A malformed context is counted and treated as none; nothing
    here raises (the call is then sent untraced)."""
    try:
        return _start(t, f, transport)
    except Exception:                       # belt and braces: bytes from the network
        (<RpcFrame>f).trace = None
        t.malformed.inc()
        return 0


cdef bint _has_ctx(RpcTracing t, object f) except -1:
    """The call carries a context of a known convention (read cheaply, before a span)."""
    cdef dict a
    if t.proto == P_BOLT:
        return ((<BoltFrame>f).header(B_TRACE) is not None
                or (<BoltFrame>f).header(B_NEW) is not None)
    a = (<DubboFrame>f).attachments
    if a:
        for k in a:                         # only the keys routing, RBAC and tracing read
            if k in D_KEYS:
                return True
    return False


cdef int _start(RpcTracing t, object f, object transport) except -1:
    cdef RpcSpan s
    cdef int found
    cdef bint drawn = False                 # a new trace's sampling decision was drawn: yes
    if not _has_ctx(t, f):
        if <long long>(rng_next() % 1000000) >= t.ppm:
            # PERF(benchmarks/instr_per_request.py --rpc-tracing): an unsampled call
            # without context allocates nothing and goes as it came
            return 0
        drawn = True
    s = RpcSpan.__new__(RpcSpan)
    s.cfg = t
    s.status = -1
    if t.proto == P_BOLT:
        found = _bolt_ctx(s, <BoltFrame>f)
    else:
        found = _dubbo_ctx(s, <DubboFrame>f, t.shared)
    if found < 0:
        t.malformed.inc()
        s = RpcSpan.__new__(RpcSpan)
        s.cfg = t
        s.status = -1
        found = 0
    if found == 0:
        if not drawn and <long long>(rng_next() % 1000000) >= t.ppm:
            return 0                        # a malformed context, not sampled: as it came
        t.started.inc()
        s.fmt = CTX_NONE
        s.sampled = True
        s.trace_id = s.zipkin_trace = _hex64() + _hex64() if t.id128 else _hex64()
        s.rpc_id = "0"                      # SOFATracer's root rpc id
        s.parent_rpc_id = ""
        s.server_id = _zid("0")
        s.server_parent = None
        s.client_rpc_id = "0.1"
        s.client_id = _zid("0.1")
    else:
        s.fmt = found
        t.continued.inc()
    if s.sampled:
        s.start_us = wall_us()
        s.service = (<RpcFrame>f).rpc_key(RK_SERVICE_ID)
        s.method = (<RpcFrame>f).rpc_key(RK_METHOD)
        peer = transport.get_extra_info("peername") if transport is not None else None
        s.peer = str(peer[0]) if peer else None
    (<RpcFrame>f).trace = s
    return 0


cdef list _bolt_entries(RpcSpan s):
    """(key, value) pairs the forwarded Bolt header map gets (replacing the same keys)."""
    if s.fmt == CTX_SOFA:
        return [(B_RPC, s.client_rpc_id)]
    if s.fmt == CTX_NONE:
        return [(B_TRACE, s.trace_id), (B_RPC, s.client_rpc_id),
                (B_SAMP, "true" if s.sampled else "false")]
    return []                               # CTX_SOFA_NEW: rewritten in place


cdef bytes _bolt_request(RpcSpan s, BoltFrame f, unsigned int nid):
    cdef list hdrs = list(f.headers())
    cdef list put = _bolt_entries(s)
    cdef dict want = dict(put)
    cdef list out = []
    for k, v in hdrs:
        if k in want:
            v = want.pop(k)
        elif k == B_NEW and s.fmt == CTX_SOFA_NEW and v is not None:
            v = _kv_update(v, s.client_rpc_id, s.rpc_id)
        out.append((k, v))
    for k, v in put:
        if k in want:
            out.append((k, v))
    nf = BoltFrame(proto=f.proto, type=f.type, cmdcode=f.cmdcode, request_id=nid,
                   codec=f.codec, timeout=f.timeout, class_name=f.class_name, headers=out,
                   content=f.content, ver1=f.ver1, ver2=f.ver2, switch=f.switch)
    if len((<BoltFrame>nf)._header_raw) > 0xffff:
        return None                         # no room in the u16 header length
    return (<BoltFrame>nf).encode()


cdef object _dubbo_spans(DubboFrame f, object body, set keys):
    """Where the attachments map of a (parsed) request body ends ('Z' offset) and the
    [start, end) byte spans of its entries whose key is in `keys`: (z, [(key, s, e)]), or
    None if the body does not walk (the request then goes as it came)."""
    cdef H2Cursor c = H2Cursor(body)
    cdef Py_ssize_t n, ks
    cdef list found = []
    cdef unsigned char b
    for _ in range(5):
        c.read_str()
    n = count_params(f.param_types or "")
    if c.err or n < 0:
        return None
    for _ in range(n):
        if c.skip():
            return None
    if c.pos >= c.end:
        return (-1, found)                  # no attachments map: one is appended
    b = c.p[c.pos]
    if b != 0x48 and b != 0x4d:
        return None
    c.pos += 1
    if b == 0x4d and c.skip_type():
        return None
    while True:
        if c.pos >= c.end:
            return None
        if c.p[c.pos] == 0x5a:
            return (c.pos, found)
        ks = c.pos
        k = c.read_simple()
        if c.err:
            return None
        if c.skip():
            return None
        if isinstance(k, str) and k in keys:
            found.append((k, ks, c.pos))


cdef list _dubbo_entries(RpcSpan s, dict a):
    cdef str sampled
    if s.fmt == CTX_SOFA_NEW:
        return [(D_SOFA, _kv_update(a.get(D_SOFA), s.client_rpc_id, s.rpc_id))]
    if s.fmt == CTX_B3:
        names = D_B3 if D_B3[0] in a else D_B3_LOWER
        sampled = "1" if s.sampled else "0"
        return [(names[1], s.client_id), (names[2], s.server_id), (names[3], sampled)]
    if s.fmt == CTX_W3C:
        v = a.get(D_W3C)
        flags = v.split("-")[3]
        return [(D_W3C, f"00-{s.trace_id}-{s.client_id}-{flags}")]
    return [(D_SOFA, f"tcid={s.trace_id}&spid={s.client_rpc_id}&pspid={s.rpc_id}&"
                     f"sample={'true' if s.sampled else 'false'}&")]


cdef bytes _dubbo_request(RpcSpan s, DubboFrame f, unsigned long long nid):
    cdef list put = _dubbo_entries(s, f.attachments or {})
    cdef set keys = {k for k, _ in put}
    if s.fmt == CTX_B3:
        keys.update(D_B3[1:], D_B3_LOWER[1:])
    body = bytes(f.body)
    where = _dubbo_spans(f, body, keys)
    if where is None:
        return None
    z, found = where
    cdef list parts = []
    cdef Py_ssize_t at = 0
    for _, a, e in found:
        parts.append(body[at:a])
        at = e
    new = b"".join([h2_encode_str(k) + h2_encode_str(v) for k, v in put])
    if z < 0:
        parts.append(body[at:])
        parts.append(b"H" + new + b"Z")
    else:
        parts.append(body[at:z])
        parts.append(new)
        parts.append(body[z:])
    nf = DubboFrame.__new__(DubboFrame)
    (<DubboFrame>nf).flags = f.flags
    (<DubboFrame>nf).status = f.status
    (<DubboFrame>nf).request_id = nid
    (<DubboFrame>nf)._body = b"".join(parts)
    return (<DubboFrame>nf).encode()


cdef bytes trace_request(object f, unsigned long long nid, Cluster cl, Host h):
    """The call's bytes for the upstream: its request id `nid`, the context updated. None
    if it cannot be rewritten (then it goes as it came, with the id rewritten)."""
    cdef RpcSpan s = (<RpcFrame>f).trace
    s.cluster = cl
    s.host = h
    if s.sampled:
        s.client_start_us = wall_us()
    try:
        if s.cfg.proto == P_BOLT:
            return _bolt_request(s, <BoltFrame>f, <unsigned int>nid)
        return _dubbo_request(s, <DubboFrame>f, nid)
    except Exception:                       # never: the call then goes as it came
        s.cfg.malformed.inc()
        return None


cdef int _end(RpcFrame f) except -1:
    cdef RpcSpan s = f.trace
    f.trace = None
    if s.sampled:
        s.end_us = wall_us()
        try:
            s.cfg.tracer.report(s)
        except Exception:                   # a report never takes a call down
            log.exception("RPC span report failed")
    return 0


cdef int trace_reply(object f, object reply) except -1:
    """The upstream answered the call (reply: its BoltFrame / DubboFrame)."""
    cdef RpcSpan s = (<RpcFrame>f).trace
    if s.sampled:
        if s.cfg.proto == P_BOLT:
            s.status = (<BoltFrame>reply).status
        else:
            s.status = (<DubboFrame>reply).status
            if s.status == 20:
                try:
                    s.business_error = (<DubboFrame>reply).response_flag() in (0, 3)
                except Exception:
                    s.business_error = False
    return _end(<RpcFrame>f)


cdef int trace_fail(object f, int why) except -1:
    """The proxy answered the call itself (no route, timeout, reset...: WHY_*)."""
    cdef RpcSpan s = (<RpcFrame>f).trace
    s.why = why
    return _end(<RpcFrame>f)


cdef int trace_oneway(object f) except -1:
    """A oneway call was sent: its spans end there."""
    return _end(<RpcFrame>f)
