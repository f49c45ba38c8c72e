# RPC proxy hot path (Bolt, Dubbo), client side: see rpc_proxy.pxd for the contract.
#
#   client --frames--> DownstreamConn --route(service, method, headers)--> Cluster.choose()
#        <--ids restored-- UpstreamConn (a few per host, multiplexed, ids rewritten) <--> server
#
# Per read, a connection decodes every complete frame, routes each (rpc_routes, through the
# codec's route keys), and queues the bytes on the chosen upstream connections
# (rpc_upstream); the queues are written once at the end of the read (one writelines per
# upstream), and replies gathered the same way on the way back. Heartbeats are answered
# locally. Failures are answered with the protocol's own error reply carrying the client's
# request id: Bolt status codes, Dubbo status bytes.

import logging
import os

from sofamesh._core.stats cimport Store
from sofamesh._core.rpc_upstream cimport WHY_QUOTA
from sofamesh._core.upstream cimport Cluster, Host
from sofamesh._core.codecs.rpcframe cimport (
    ProtocolError, RpcFrame, RK_SERVICE, RK_METHOD, RK_VERSION, RK_GROUP,
)
from sofamesh._core.codecs.bolt cimport (
    BoltFrame, BoltDecoder, rewrite_request_id as bolt_rewrite, heartbeat_ack as bolt_hb_ack,
    error_response as bolt_error,
)
from sofamesh._core.codecs.dubbo cimport (
    DubboFrame, DubboDecoder, rewrite_request_id as dubbo_rewrite,
    heartbeat_response as dubbo_hb_reply, error_response as dubbo_error,
)
from sofamesh._core.rpc_routes cimport RpcRoute, RpcRouteTable
from sofamesh._core.rpc_upstream cimport (
    RpcStats, RpcUpstreams, UpstreamConn, Pending, P_BOLT, P_DUBBO, WHY_NO_ROUTE,
    WHY_UNKNOWN_CLUSTER, WHY_NO_HEALTHY, WHY_TIMEOUT, WHY_RESET, WHY_CONNECT_FAIL, WHY_CODEC,
    WHY_DRAINING, WHY_RBAC,
)
from sofamesh._core.rbac cimport (
    NetworkRbac, RbacRequest, rbac_parse_ip, ADDR_LOCAL, PSEUDO_HOST, PSEUDO_SERVICE,
    PSEUDO_METHOD, PSEUDO_VERSION, PSEUDO_GROUP, PSEUDO_PRINCIPAL, PSEUDO_SNI, tls_pseudo,
)
from sofamesh._core.rpc_tracing cimport (
    dubbo_trace_keys, trace_start, trace_request, trace_fail, trace_oneway,
)
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from sofamesh.proxy.original_dst import local_address as _local_address


# Bolt status per failure (MOSN's mapping of the same conditions).
cdef int _bolt_status(int why) noexcept:
    if why == WHY_NO_ROUTE or why == WHY_UNKNOWN_CLUSTER:
        return 6        # NO_PROCESSOR
    if why == WHY_TIMEOUT:
        return 7        # TIMEOUT
    if why == WHY_CODEC:
        return 9        # CODEC_EXCEPTION
    if why == WHY_DRAINING:
        return 4        # SERVER_THREADPOOL_BUSY
    if why == WHY_RBAC:
        return 2        # SERVER_EXCEPTION
    if why == WHY_QUOTA:
        return 4        # SERVER_THREADPOOL_BUSY: sofa-rpc's answer when it sheds load
    return 0x10         # CONNECTION_CLOSED: no healthy host, reset, connect failure


# Dubbo status per failure (as Envoy's dubbo_proxy answers them).
cdef int _dubbo_status(int why) noexcept:
    if why == WHY_NO_ROUTE or why == WHY_UNKNOWN_CLUSTER:
        return 60       # SERVICE_NOT_FOUND
    if why == WHY_TIMEOUT:
        return 31       # SERVER_TIMEOUT
    if why == WHY_CODEC:
        return 40       # BAD_REQUEST
    if why == WHY_RBAC:
        return 70       # SERVICE_ERROR: what a provider answers when its own filter refuses
    if why == WHY_QUOTA:
        return 100      # SERVER_THREADPOOL_EXHAUSTED_ERROR: Dubbo's overload answer
    return 80           # SERVER_ERROR


log = logging.getLogger("sofamesh.rpc")

# Error texts for Dubbo replies, worded as Envoy's dubbo_proxy words them.
_WHY_TEXT = {
    WHY_NO_ROUTE: "dubbo router: no route", WHY_UNKNOWN_CLUSTER: "dubbo router: unknown cluster",
    WHY_NO_HEALTHY: "dubbo upstream request: no healthy upstream",
    WHY_TIMEOUT: "dubbo upstream request: timeout",
    WHY_RESET: "dubbo upstream request: remote connection failure (reset)",
    WHY_CONNECT_FAIL: "dubbo upstream request: remote connection failure",
    WHY_CODEC: "dubbo proxy: bad request", WHY_DRAINING: "dubbo proxy: draining",
    WHY_RBAC: "RBAC: access denied", WHY_QUOTA: "rate limited: over the call quota",
}


cdef class RpcRbacRequest(RbacRequest):
    cdef int resolve(self, int which) except -1:
        cdef bytes ip
        if self.transport is None:
            info = None
        elif which == ADDR_LOCAL:
            info = _local_address(self.transport)   # the original destination, when restored
        else:
            info = self.transport.get_extra_info("peername")
        if info:
            ip = str(info[0]).encode()
            rbac_parse_ip(PyBytes_AS_STRING(ip), PyBytes_GET_SIZE(ip), &self.addr[which])
            self.port[which] = info[1]
        return 0

    cdef object header(self, bytes name):
        v = self.frame.rpc_header(name.decode("latin-1"))
        return None if v is None else (<str>v).encode()

    cdef object read_pseudo(self, int which):
        if which == PSEUDO_PRINCIPAL or which == PSEUDO_SNI:
            return tls_pseudo(self.transport, which)     # the client connection's TLS
        if which == PSEUDO_HOST:
            return self.header(b"host")
        if which == PSEUDO_SERVICE:
            v = self.frame.rpc_key(RK_SERVICE)
        elif which == PSEUDO_METHOD:
            v = self.frame.rpc_key(RK_METHOD)
        elif which == PSEUDO_VERSION:
            v = self.frame.rpc_key(RK_VERSION)
        elif which == PSEUDO_GROUP:
            v = self.frame.rpc_key(RK_GROUP)
        else:
            return None
        return None if v is None else (<str>v).encode()


cdef class DownstreamConn:
    def __init__(self, RpcProxyConfig cfg):
        self.cfg = cfg
        self.transport = None
        self.decoder = BoltDecoder(cfg.max_frame) if cfg.proto == P_BOLT \
            else DubboDecoder(cfg.max_frame)
        self.out = []
        self.dirty = []
        self.closed = False
        self.active = 0
        self.reading = True
        self.write_paused = False
        self.held = None
        self.moving = False

    def connection_made(self, transport):
        self.transport = transport
        self.cfg.conns.add(self)
        if self.cfg.upstream_paused:
            self.set_reading()
        self.cfg.st.cx_total.inc()
        self.cfg.st.cx_active.inc()

    def data_received(self, data):
        cdef UpstreamConn u
        if not self.reading:
            # uvloop starts reading after connection_made even if it paused there: hold
            # this read (nothing more comes once paused) until the listener reads again
            self.transport.pause_reading()
            self.held = data if self.held is None else self.held + data
            return
        if self.held is not None:
            # a read held while paused goes first (reading resumed before _take_held ran)
            data = self.held + data
            self.held = None
        frames = (<BoltDecoder>self.decoder).feed(data) if self.cfg.proto == P_BOLT \
            else (<DubboDecoder>self.decoder).feed(data)
        for f in frames:
            if self.cfg.proto == P_BOLT:
                self.handle_bolt(f)
            else:
                self.handle_dubbo(f)
            if self.closed:
                break
        for u in self.dirty:
            u.flush()
        self.dirty = []
        self.flush()

    def feed_first(self, data):
        """Hands over bytes already read by a protocol sniffer."""
        self.data_received(data)

    def eof_received(self):
        return False

    def connection_lost(self, exc):
        self.closed = True
        self.cfg.conns.discard(self)
        self.cfg.st.cx_active.dec()
        if self.active > 0:
            self.cfg.st.cx_destroy_remote_with_active_rq.inc()

    def pause_writing(self):
        # This client is not reading its responses: stop taking its requests.
        self.write_paused = True
        self.set_reading()

    def resume_writing(self):
        self.write_paused = False
        self.set_reading()

    cdef void set_reading(self):
        cdef bint want = not self.write_paused and self.cfg.upstream_paused == 0 and \
            not self.moving
        if self.closed or self.transport is None or want == self.reading:
            return
        self.reading = want
        if want:
            self.transport.resume_reading()
            if self.held is not None:
                self.cfg.loop.call_soon(self._take_held)
        else:
            self.transport.pause_reading()

    def _take_held(self):
        data = self.held
        self.held = None
        if data is not None and not self.closed:
            self.data_received(data)

    def close(self):
        if self.transport is not None and not self.closed:
            if self.active > 0:
                self.cfg.st.cx_destroy_local_with_active_rq.inc()
            self.transport.close()

    def busy(self):
        return self.active > 0

    def hand_over(self):
        """Hot restart (proxy/hot_restart.py): first call, at a frame boundary (nothing read
        ahead), stops reading: what the client sends next waits in the kernel. Once the
        calls in flight are answered and written, returns a duplicate of the descriptor for
        the new process (None until then); `handed_over()` then drops this side."""
        t = self.transport
        if self.closed or t is None or t.get_extra_info("sslcontext") is not None:
            return None
        if not self.moving:
            if self.held is not None or self.decoder.buffered:
                return None             # mid-frame: read on to the boundary
            self.moving = True
            self.set_reading()
            if self.reading:            # (set_reading only changes what it must)
                self.reading = False
                t.pause_reading()
        if self.active > 0 or self.out or self.held is not None or t.get_write_buffer_size():
            return None
        sock = t.get_extra_info("socket")
        return None if sock is None else os.dup(sock.fileno())

    def handed_over(self):
        """Gone without a FIN: the new process's duplicate keeps the socket open."""
        if self.transport is not None and not self.closed:
            self.transport.abort()

    cdef void write(self, bytes data):
        self.out.append(data)

    cdef void flush(self):
        if not self.out or self.closed:
            self.out = []
            return
        if len(self.out) == 1:
            self.transport.write(self.out[0])
        else:
            self.transport.writelines(self.out)
        self.out = []

    cdef void local_error(self, object f, int why):
        """The protocol's own error reply for request `f` (its id as the client sent it)."""
        cdef RpcStats st = self.cfg.st
        if (<RpcFrame>f).trace is not None:
            trace_fail(f, why)
        # Envoy counts its local error replies (AppException) as business exceptions
        st.local_response_business_exception.inc()
        if self.closed:
            return
        if self.cfg.proto == P_BOLT:
            if (<BoltFrame>f).type == 2:
                return  # oneway: nothing to answer
            self.write(bolt_error(<BoltFrame>f, _bolt_status(why)))
        else:
            if not ((<DubboFrame>f).flags & 0x40):
                return
            msg = _WHY_TEXT.get(why, "error")
            if why == WHY_NO_ROUTE:
                msg = f"dubbo router: no route for interface '{(<DubboFrame>f).service}'"
            self.write(dubbo_error(<DubboFrame>f, _dubbo_status(why), msg))

    cdef bint rbac_allows(self, object f) except -1:
        cdef RpcProxyConfig cfg = self.cfg
        cdef NetworkRbac nr = cfg.rbac
        cdef RpcRbacRequest r = cfg.rbac_req
        cdef int policy = -1
        r.frame = <RpcFrame>f
        r.transport = self.transport
        try:
            return nr.st.check(nr.policies, r, &policy)
        finally:
            r.frame = None
            r.transport = None

    cdef bint quota_admits(self, object f) except -1:
        cdef RpcProxyConfig cfg = self.cfg
        cdef RpcRbacRequest r = cfg.rbac_req       # RBAC's accessor, free between checks
        r.frame = <RpcFrame>f
        r.transport = self.transport
        try:
            return cfg.quota.admit(r)
        finally:
            r.frame = None
            r.transport = None

    cdef void handle_bolt(self, object obj):
        cdef BoltFrame f
        cdef ProtocolError e
        cdef RpcStats st = self.cfg.st
        if isinstance(obj, ProtocolError):
            e = <ProtocolError>obj
            st.request_decoding_error.inc()
            if e.fatal:
                log.debug("bolt.%s: closing a client connection: %s", self.cfg.stat_prefix,
                          e.reason)
                self.flush()
                self.close()
                self.closed = True
            elif e.frame is not None and (<BoltFrame>e.frame).type != 0:
                self.local_error(e.frame, WHY_CODEC)
            return
        f = <BoltFrame>obj
        if f.cmdcode == 0:
            # heartbeats: counted as events only, answered here (as Envoy's dubbo_proxy)
            st.request_event.inc()
            if f.type != 0:
                self.write(bolt_hb_ack(f))
            return
        if f.type == 0:
            return  # a response from a client: nothing to do with it
        st.request_decoding_success.inc()
        st.request.inc()
        if f.type == 2:
            st.request_oneway.inc()
        else:
            st.request_twoway.inc()
        self.forward(f, f.request_id, f.type == 2,
                     f.timeout / 1000.0 if f.timeout > 0 else self.cfg.default_timeout)

    cdef void handle_dubbo(self, object obj):
        cdef DubboFrame f
        cdef ProtocolError e
        cdef RpcStats st = self.cfg.st
        if isinstance(obj, ProtocolError):
            e = <ProtocolError>obj
            st.request_decoding_error.inc()
            if e.fatal:
                log.debug("dubbo.%s: closing a client connection: %s", self.cfg.stat_prefix,
                          e.reason)
                self.flush()
                self.close()
                self.closed = True
            return
        f = <DubboFrame>obj
        if not (f.flags & 0x80):
            return  # a response (e.g. to nothing we sent): drop
        if f.flags & 0x20:
            # events (heartbeats): counted as events only, answered here, as Envoy does
            st.request_event.inc()
            if f.flags & 0x40:
                self.write(dubbo_hb_reply(f))
            return
        if f.parse_invocation(self.cfg.dubbo_keys()) != 0:
            st.request_decoding_error.inc()
            self.local_error(f, WHY_CODEC)
            return
        st.request_decoding_success.inc()
        st.request.inc()
        if f.flags & 0x40:
            st.request_twoway.inc()
        else:
            st.request_oneway.inc()
        timeout = self.cfg.default_timeout
        t = f.attachments.get("timeout")
        if t is not None:
            try:
                tv = int(t)
                if tv > 0:
                    timeout = tv / 1000.0
            except (TypeError, ValueError):
                pass
        self.forward(f, f.request_id, not (f.flags & 0x40), timeout)

    cdef void forward(self, object f, unsigned long long orig_id, bint oneway, double timeout_s):
        cdef RpcProxyConfig cfg = self.cfg
        cdef RpcStats st = cfg.st
        cdef RpcRoute r
        cdef Cluster cl
        cdef Host h
        cdef UpstreamConn u
        cdef Pending p
        cdef unsigned long long nid
        if cfg.tracing is not None:
            trace_start(cfg.tracing, f, self.transport)
        if cfg._stopped:
            self.local_error(f, WHY_DRAINING)
            return
        if cfg.rbac is not None and not self.rbac_allows(f):
            self.local_error(f, WHY_RBAC)
            return
        r = cfg.table.match(<RpcFrame>f)
        if r is None:
            st.route_missing.inc()
            self.local_error(f, WHY_NO_ROUTE)
            return
        if cfg.quota is not None and not self.quota_admits(f):
            self.local_error(f, WHY_QUOTA)
            return
        cl = cfg.clusters.get(r.pick_cluster())
        if cl is None:
            st.unknown_cluster.inc()
            self.local_error(f, WHY_UNKNOWN_CLUSTER)
            return
        h = cl.choose()
        if h is None:
            st.no_healthy_upstream.inc()
            cl.upstream_cx_none_healthy.inc()
            self.local_error(f, WHY_NO_HEALTHY)
            return
        u = cfg.upstream_for(cl, h)
        nid = u.next_id
        u.next_id += 1
        if cfg.proto == P_BOLT and u.next_id > 0x7fffffff:
            u.next_id = 1
        data = trace_request(f, nid, cl, h) if (<RpcFrame>f).trace is not None else None
        if data is None:
            if cfg.proto == P_BOLT:
                data = bolt_rewrite(<BoltFrame>f, <unsigned int>nid)
            else:
                data = dubbo_rewrite(<DubboFrame>f, nid)
        cl.upstream_rq_total.inc()
        h.rq_total += 1
        if not oneway:
            p = Pending.__new__(Pending)
            p.down = self
            p.frame = f
            p.orig_id = orig_id
            p.start = cfg.loop.time()
            p.deadline = p.start + timeout_s
            p.cluster = cl
            p.host = h
            u.pending[nid] = p
            self.active += 1
            cl.upstream_rq_active.inc()
            cl.rq_active += 1
            h.rq_active += 1
            st.request_active.inc()
            cfg.arm_sweeper()
        else:
            cl.upstream_rq_completed.inc()
            if (<RpcFrame>f).trace is not None:
                trace_oneway(f)
        u.send(data)
        if not u.dirty:
            u.dirty = True
            self.dirty.append(u)


cdef class RpcProxyConfig:
    def __init__(self, int proto, str stat_prefix, RpcRouteTable table, dict clusters,
                 Store store, loop, double default_timeout=3.0, int max_frame=16 << 20,
                 int conns_per_host=2):
        RpcUpstreams.__init__(
            self, proto, clusters, loop,
            RpcStats(store, f"{'bolt' if proto == P_BOLT else 'dubbo'}.{stat_prefix}."),
            max_frame, conns_per_host)
        self.stat_prefix = stat_prefix
        self.table = table
        self.default_timeout = default_timeout
        self._draining = False
        self.rbac = None
        self.rbac_req = RpcRbacRequest.__new__(RpcRbacRequest)
        self.tracing = None
        self._keys_src = None
        self._keys_rbac = None
        self._keys = None

    cdef tuple dubbo_keys(self):
        """The attachments a Dubbo request's parse decodes: `group` (a route key), `timeout`,
        and the names the route table's and RBAC's header matchers read."""
        cdef tuple t = self.table.header_names
        if t is not self._keys_src or self.rbac is not self._keys_rbac \
                or self.tracing is not self._keys_tracing:
            names = {b"group", b"timeout", *t}
            if self.rbac is not None:
                names |= {n.encode() for n in self.rbac.policies.header_names
                          if not n.startswith(":")}
            if self.tracing is not None:
                names.update(dubbo_trace_keys())
            self._keys = tuple(sorted(names))
            self._keys_src = t
            self._keys_rbac = self.rbac
            self._keys_tracing = self.tracing
        return self._keys

    def protocol_factory(self):
        return DownstreamConn(self)

    def close_all(self):
        """Closes every downstream and upstream connection (stop)."""
        self._draining = True
        self._stopped = True
        for d in list(self.conns):
            d.close()
        self.close_upstreams()

    @property
    def draining(self):
        return self._draining

    @draining.setter
    def draining(self, bint v):
        """Set by the Server's drain: requests keep being served; Dubbo clients are sent a
        READONLY event ("R") so they move new calls to other providers."""
        cdef DownstreamConn d
        if v and not self._draining and self.proto == P_DUBBO:
            event = DubboFrame(0, request=True, two_way=False, event=True,
                               body=b"\x01R").encode()
            for d in list(self.conns):
                if not d.closed and d.transport is not None:
                    d.transport.write(event)
        self._draining = v

    @property
    def stats(self):
        return self.st


PROTO_BOLT = P_BOLT
PROTO_DUBBO = P_DUBBO
