# RPC proxy hot path (Bolt, Dubbo): see rpc_proxy.pxd for the contract.
#
#   client --frames--> DownstreamConn --route(service, method, headers)--> Cluster.choose()
#        <--ids restored-- UpstreamConn (a few per host, multiplexed, ids rewritten) <--> server
#
# Per read, a connection decodes every complete frame, routes each, and queues the bytes
# on the chosen upstream connections; the queues are written once at the end of the read
# (one writelines per upstream), and replies gathered the same way on the way back.
# Heartbeats are answered locally. Failures are answered with the protocol's own error
# reply carrying the client's request id: Bolt status codes, Dubbo status bytes.

import asyncio
import logging
import re

from sofamesh._core.stats cimport Store
from sofamesh._core.upstream cimport Cluster, Host
from sofamesh._core.codecs.rpcframe cimport ProtocolError
from sofamesh._core.codecs.bolt cimport (
    BoltFrame, BoltDecoder, rewrite_request_id as bolt_rewrite, heartbeat_ack as bolt_hb_ack,
    error_response as bolt_error,
)
from sofamesh._core.codecs.dubbo cimport (
    DubboFrame, DubboDecoder, rewrite_request_id as dubbo_rewrite,
    heartbeat_response as dubbo_hb_reply, error_response as dubbo_error,
)
from sofamesh._core.router cimport rng_next
from sofamesh._core.rbac cimport (
    NetworkRbac, RbacRequest, rbac_parse_ip, ADDR_LOCAL, PSEUDO_HOST, PSEUDO_SERVICE,
    PSEUDO_METHOD, PSEUDO_VERSION, PSEUDO_GROUP, PSEUDO_PRINCIPAL, PSEUDO_SNI, tls_pseudo,
)
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE

cdef enum:
    # bytes queued for a connection still being made above which the listener stops
    # reading its clients, as for a full socket buffer (uvloop's default high-water mark)
    QUEUE_HIGH = 64 * 1024

cdef enum:
    WHY_NO_ROUTE = 1
    WHY_UNKNOWN_CLUSTER = 2
    WHY_NO_HEALTHY = 3
    WHY_TIMEOUT = 4
    WHY_RESET = 5
    WHY_CONNECT_FAIL = 6
    WHY_CODEC = 7
    WHY_DRAINING = 8
    WHY_RBAC = 9

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
    return 80           # SERVER_ERROR

# Error texts for Dubbo replies, worded as Envoy's dubbo_proxy words them.
log = logging.getLogger("sofamesh.rpc")

_WHY_TEXT = {
    WHY_NO_ROUTE: "dubbo router: no route", WHY_UNKNOWN_CLUSTER: "dubbo router: unknown cluster",
    WHY_NO_HEALTHY: "dubbo upstream request: no healthy upstream",
    WHY_TIMEOUT: "dubbo upstream request: timeout",
    WHY_RESET: "dubbo upstream request: remote connection failure (reset)",
    WHY_CONNECT_FAIL: "dubbo upstream request: remote connection failure",
    WHY_CODEC: "dubbo proxy: bad request", WHY_DRAINING: "dubbo proxy: draining",
    WHY_RBAC: "RBAC: access denied",
}


# -- the route keys of a request, one place for every protocol --------------------------

cdef object rpc_key(int proto, object frame, int key):
    cdef BoltFrame bf
    cdef DubboFrame df
    if proto == P_BOLT:
        bf = <BoltFrame>frame
        if key == RK_METHOD:
            return bf.method()
        service = bf.service()          # interface[:version[:group]]
        if service is None:
            return None
        parts = service.split(":")
        if key == RK_SERVICE:
            return parts[0]
        if key == RK_VERSION:
            return parts[1] if len(parts) > 1 else None
        return parts[2] if len(parts) > 2 else None
    df = <DubboFrame>frame
    if key == RK_SERVICE:
        return df.service
    if key == RK_METHOD:
        return df.method
    if key == RK_VERSION:
        return df.version
    return (df.attachments or {}).get("group")


cdef object rpc_header(int proto, object frame, str name):
    if proto == P_BOLT:
        return (<BoltFrame>frame).header(name)
    v = ((<DubboFrame>frame).attachments or {}).get(name)
    if v is not None and not isinstance(v, str):
        v = str(v)
    return v


cdef class RpcRbacRequest(RbacRequest):
    cdef int resolve(self, int which) except -1:
        cdef bytes ip
        info = self.transport.get_extra_info("sockname" if which == ADDR_LOCAL else "peername") \
            if self.transport is not None else None
        if info:
            ip = str(info[0]).encode()
            rbac_parse_ip(PyBytes_AS_STRING(ip), PyBytes_GET_SIZE(ip), &self.addr[which])
            self.port[which] = info[1]
        return 0

    cdef object header(self, bytes name):
        v = rpc_header(self.proto, self.frame, name.decode("latin-1"))
        return None if v is None else (<str>v).encode()

    cdef object read_pseudo(self, int which):
        if which == PSEUDO_PRINCIPAL or which == PSEUDO_SNI:
            return tls_pseudo(self.transport, which)     # the client connection's TLS
        if which == PSEUDO_HOST:
            return self.header(b"host")
        if which == PSEUDO_SERVICE:
            v = rpc_key(self.proto, self.frame, RK_SERVICE)
        elif which == PSEUDO_METHOD:
            v = rpc_key(self.proto, self.frame, RK_METHOD)
        elif which == PSEUDO_VERSION:
            v = rpc_key(self.proto, self.frame, RK_VERSION)
        elif which == PSEUDO_GROUP:
            v = rpc_key(self.proto, self.frame, RK_GROUP)
        else:
            return None
        return None if v is None else (<str>v).encode()


cdef class StrMatch:
    def __init__(self, int kind, str value="", bint ignore_case=False):
        self.kind = kind
        self.ignore_case = ignore_case
        self.value = value.lower() if ignore_case else value
        self.regex = re.compile(value) if kind == SM_REGEX else None

    cdef bint match(self, object s):
        if s is None:
            return False
        if self.kind == SM_ANY:
            return True
        if self.ignore_case:
            s = s.lower()
        if self.kind == SM_EXACT:
            return s == self.value
        if self.kind == SM_PREFIX:
            return s.startswith(self.value)
        if self.kind == SM_SUFFIX:
            return s.endswith(self.value)
        if self.kind == SM_CONTAINS:
            return self.value in s
        return self.regex.fullmatch(s) is not None


cdef class HeaderMatch:
    def __init__(self, str name, StrMatch sm=None, bint present=False, bint invert=False):
        self.name = name
        self.sm = sm
        self.present = present
        self.invert = invert

    cdef bint match(self, object value):
        cdef bint ok
        if self.sm is None:
            ok = (value is not None) == self.present
        else:
            ok = self.sm.match(value)
        return ok != self.invert


cdef class RpcRoute:
    def __init__(self, StrMatch method, list headers, str cluster="", list weighted=None):
        self.method = method
        self.headers = headers
        self.cluster = cluster
        self.weighted = weighted or []
        self.total_weight = sum(w for _, w in self.weighted)

    cdef str pick_cluster(self):
        cdef long long r
        if not self.weighted:
            return self.cluster
        r = <long long>(rng_next() % <unsigned long long>(self.total_weight or 1))
        for name, w in self.weighted:
            if r < w:
                return name
            r -= w
        return self.weighted[len(self.weighted) - 1][0]


cdef class RpcRouteConfig:
    def __init__(self, str interface, str group, str version, list routes):
        self.interface = interface
        self.group = group
        self.version = version
        self.routes = routes
        self.needs_method = any((<RpcRoute>r).method is not None for r in routes)
        self.needs_headers = any((<RpcRoute>r).headers for r in routes)


cdef inline object _bolt_header(BoltFrame f, str name):
    return f.header(name)


cdef class RpcRouteTable:
    def __init__(self, list configs):
        cdef RpcRouteConfig rc
        cdef RpcRoute r
        cdef HeaderMatch hm
        self.configs = configs
        # Dubbo attachments the proxy reads: group, timeout and every header matcher's name;
        # the others are skipped without decoding.
        keys = {"group", "timeout"}
        for rc in configs:
            for r in rc.routes:
                for hm in r.headers:
                    keys.add(hm.name)
        self.dubbo_keys = tuple(sorted(k.encode() for k in keys))

    cdef RpcRoute match(self, int proto, object frame):
        cdef RpcRouteConfig rc
        cdef RpcRoute r
        cdef HeaderMatch hm
        cdef BoltFrame bf
        cdef DubboFrame df
        cdef str iface, group = None, version = None
        if proto == P_BOLT:
            bf = <BoltFrame>frame
            service = bf.service()
            if service is None:
                return None
            parts = service.split(":")
            iface = parts[0]
            version = parts[1] if len(parts) > 1 else ""
            group = parts[2] if len(parts) > 2 else ""
        else:
            df = <DubboFrame>frame
            service = df.service
            if service is None:
                return None
            iface = service
            version = df.version or ""
            group = (df.attachments or {}).get("group") or ""
        for rc in self.configs:
            if rc.interface != "*" and rc.interface != iface and rc.interface != service:
                continue
            if rc.group and rc.group != group:
                continue
            if rc.version and rc.version != version:
                continue
            method = None
            if rc.needs_method:
                method = bf.method() if proto == P_BOLT else df.method
            for r in rc.routes:
                if r.method is not None and not r.method.match(method):
                    continue
                ok = True
                for hm in r.headers:
                    if proto == P_BOLT:
                        v = bf.header(hm.name)
                    else:
                        v = (df.attachments or {}).get(hm.name)
                        if v is not None and not isinstance(v, str):
                            v = str(v)
                    if not hm.match(v):
                        ok = False
                        break
                if ok:
                    return r
        return None

    def route_for_test(self, int proto, frame):
        r = self.match(proto, frame)
        return None if r is None else r.pick_cluster()


cdef class RpcStats:
    """Envoy dubbo_proxy-style stats under <bolt|dubbo>.<stat_prefix>."""

    def __init__(self, Store store, str prefix):
        self.request = store.counter(prefix + "request")
        self.request_twoway = store.counter(prefix + "request_twoway")
        self.request_oneway = store.counter(prefix + "request_oneway")
        self.request_event = store.counter(prefix + "request_event")
        self.request_decoding_error = store.counter(prefix + "request_decoding_error")
        self.request_decoding_success = store.counter(prefix + "request_decoding_success")
        self.response = store.counter(prefix + "response")
        self.response_success = store.counter(prefix + "response_success")
        self.response_error = store.counter(prefix + "response_error")
        self.response_decoding_error = store.counter(prefix + "response_decoding_error")
        self.local_response_success = store.counter(prefix + "local_response_success")
        self.local_response_error = store.counter(prefix + "local_response_error")
        self.local_response_business_exception = store.counter(
            prefix + "local_response_business_exception")
        self.response_decoding_success = store.counter(prefix + "response_decoding_success")
        self.response_business_exception = store.counter(
            prefix + "response_business_exception")
        self.response_error_caused_connection_close = store.counter(
            prefix + "response_error_caused_connection_close")
        self.route_missing = store.counter(prefix + "route_missing")
        self.unknown_cluster = store.counter(prefix + "unknown_cluster")
        self.no_healthy_upstream = store.counter(prefix + "no_healthy_upstream")
        self.upstream_rq_timeout = store.counter(prefix + "upstream_rq_timeout")
        self.upstream_reset = store.counter(prefix + "upstream_reset")
        self.cx_total = store.counter(prefix + "cx_total")
        self.cx_destroy_local_with_active_rq = store.counter(
            prefix + "cx_destroy_local_with_active_rq")
        self.cx_destroy_remote_with_active_rq = store.counter(
            prefix + "cx_destroy_remote_with_active_rq")
        self.request_active = store.gauge(prefix + "request_active")
        self.cx_active = store.gauge(prefix + "cx_active")
        self.request_time_ms = store.histogram(prefix + "request_time_ms")


cdef class Pending:
    pass


cdef class UpstreamConn:
    """One upstream connection carrying many downstream requests (ids rewritten)."""

    def __init__(self, RpcProxyConfig cfg, Cluster cluster, Host host):
        self.cfg = cfg
        self.cluster = cluster
        self.host = host
        self.transport = None
        self.decoder = BoltDecoder(cfg.max_frame) if cfg.proto == P_BOLT \
            else DubboDecoder(cfg.max_frame)
        self.pending = {}
        self.out = []
        self.connected = False
        self.closed = False
        self.dirty = False
        self.paused = False
        self.tpaused = False
        self.local_close = False
        self.next_id = 1
        self.queued = 0
        self.connect_timer = None
        self.connect_task = None

    # asyncio.Protocol
    def connection_made(self, transport):
        if self.connect_timer is not None:
            self.connect_timer.cancel()
            self.connect_timer = None
        if self.closed:
            # given up at its connect timeout in the loop pass that saw the connect done:
            # its requests were answered then; nothing is sent on it
            transport.abort()
            return
        self.transport = transport
        self.connected = True
        if self.local_close:  # given up while connecting (its host left the cluster)
            transport.close()
            return
        if self.out:
            self.flush()
        self.queued = 0
        if not self.tpaused:
            self._release()  # what was queued fit in the socket: clients are read again

    def data_received(self, data):
        cdef Pending p
        cdef DownstreamConn d
        cdef list touched = []
        cdef double now
        cdef int proto = self.cfg.proto
        cdef RpcStats st = self.cfg.st
        self.cluster.upstream_cx_rx_bytes_total.add(len(data))
        frames = (<BoltDecoder>self.decoder).feed(data) if proto == P_BOLT \
            else (<DubboDecoder>self.decoder).feed(data)
        now = self.cfg.loop.time()
        for f in frames:
            if isinstance(f, ProtocolError):
                st.response_decoding_error.inc()
                if (<ProtocolError>f).fatal:
                    st.response_error_caused_connection_close.inc()
                    self.cluster.upstream_cx_protocol_error.inc()
                    self.abort(WHY_RESET)
                    break
                rid = (<ProtocolError>f).request_id
                if rid >= 0 and rid in self.pending:
                    p = self.pending.pop(rid)
                    self._done_c(p, now, False)
                    p.down.local_error(p.frame, WHY_CODEC)
                    if p.down not in touched:
                        touched.append(p.down)
                continue
            if proto == P_BOLT:
                if (<BoltFrame>f).type != 0:
                    if (<BoltFrame>f).cmdcode == 0 and self.transport is not None:
                        self.transport.write(bolt_hb_ack(<BoltFrame>f))  # server's heartbeat
                    continue
                rid = (<BoltFrame>f).request_id
            else:
                if (<DubboFrame>f).flags & 0x80:
                    if (<DubboFrame>f).flags & 0x20 and (<DubboFrame>f).flags & 0x40 \
                            and self.transport is not None:
                        self.transport.write(dubbo_hb_reply(<DubboFrame>f))
                    continue
                rid = (<DubboFrame>f).request_id
            st.response_decoding_success.inc()
            p = self.pending.pop(rid, None)
            if p is None:
                continue  # timed out already, or a reply to a heartbeat we did not send
            d = p.down
            st.response.inc()
            if proto == P_BOLT:
                ok = (<BoltFrame>f).status == 0
                out = bolt_rewrite(<BoltFrame>f, <unsigned int>p.orig_id)
            else:
                ok = (<DubboFrame>f).status == 20
                if ok and (<DubboFrame>f)._blen and (
                        (<DubboFrame>f)._base[(<DubboFrame>f)._boff] in (0x90, 0x93)):
                    st.response_business_exception.inc()  # flag 0/3: the call threw
                out = dubbo_rewrite(<DubboFrame>f, p.orig_id)
            if ok:
                st.response_success.inc()
            else:
                st.response_error.inc()
            self._done_c(p, now, ok)
            if not d.closed:
                d.write(out)
                if d not in touched:
                    touched.append(d)
        for d in touched:
            d.flush()

    cdef void _done_c(self, Pending p, double now, bint ok):
        cdef double ms = (now - p.start) * 1000.0
        self.cluster.upstream_rq_completed.inc()
        self.cluster.upstream_rq_active.dec()
        self.cluster.rq_active -= 1
        self.cluster.upstream_rq_time.record(ms)
        self.cfg.st.request_time_ms.record(ms)
        self.cfg.st.request_active.dec()
        self.host.rq_active -= 1
        if ok:
            self.host.rq_success += 1
        else:
            self.host.rq_error += 1
        p.down.active -= 1

    def eof_received(self):
        return False

    def connection_lost(self, exc):
        self.transport = None
        if self.closed:
            return  # given up at its connect timeout, and counted then
        self.closed = True
        was_connected = self.connected
        self.connected = False
        self.cluster.upstream_cx_active.dec()
        self.cluster.cx_active -= 1
        self.host.cx_active -= 1
        self.cluster.upstream_cx_destroy.inc()
        if self.local_close:
            self.cluster.upstream_cx_destroy_local.inc()
        else:
            self.cluster.upstream_cx_destroy_remote.inc()
        self._remove()
        if self.pending:
            self.fail_all(WHY_RESET if was_connected else WHY_CONNECT_FAIL)
        # the transport never calls resume_writing for a connection that died full:
        # without this, the listener would stop reading its clients for good
        self.tpaused = False
        self._release()

    def pause_writing(self):
        # The upstream is not keeping up: stop reading requests from every client of
        # this listener until its buffer drains (requests share upstream connections).
        self.tpaused = True
        self._hold()

    def resume_writing(self):
        self.tpaused = False
        self._release()

    cdef void _hold(self):
        if self.paused:
            return
        self.paused = True
        self.cfg.upstream_paused += 1
        if self.cfg.upstream_paused == 1:
            for d in self.cfg.conns:
                (<DownstreamConn>d).set_reading()

    cdef void _release(self):
        if not self.paused:
            return
        self.paused = False
        if self.cfg.upstream_paused > 0:
            self.cfg.upstream_paused -= 1
            if self.cfg.upstream_paused == 0:
                for d in self.cfg.conns:
                    (<DownstreamConn>d).set_reading()

    cdef void send(self, bytes data):
        self.out.append(data)
        self.cluster.upstream_cx_tx_bytes_total.add(len(data))
        if not self.connected:
            # requests for a connection being made wait in memory: bounded as a socket
            # buffer is (a connect can hang until the cluster's connect_timeout)
            self.queued += len(data)
            if self.queued > QUEUE_HIGH:
                self._hold()

    cdef void flush(self):
        self.dirty = False
        if not self.connected or not self.out:
            return
        if len(self.out) == 1:
            self.transport.write(self.out[0])
        else:
            self.transport.writelines(self.out)
        self.out = []

    cdef void fail_all(self, int why):
        cdef Pending p
        cdef list touched = []
        cdef double now = self.cfg.loop.time()
        pend = self.pending
        self.pending = {}
        self.out = []
        for p in pend.values():
            self.cfg.st.upstream_reset.inc()
            self.cluster.upstream_rq_rx_reset.inc()
            self._done_c(p, now, False)
            p.down.local_error(p.frame, why)
            if p.down not in touched:
                touched.append(p.down)
        for d in touched:
            (<DownstreamConn>d).flush()

    def abort(self, int why=WHY_RESET):
        self._remove()
        if self.transport is not None:
            self.local_close = True
            self.transport.abort()
        elif self.pending:
            self.fail_all(why)

    def _remove(self):
        pool = self.cfg.pools.get(self.host)
        if pool is not None and self in pool:
            pool.remove(self)

    def connect_failed(self, exc):
        if self.closed:
            return
        if self.connect_timer is not None:
            self.connect_timer.cancel()
            self.connect_timer = None
        self.closed = True
        self.cluster.upstream_cx_connect_fail.inc()
        self.host.cx_connect_fail += 1
        self.cluster.upstream_cx_active.dec()
        self.cluster.cx_active -= 1
        self.host.cx_active -= 1
        self._remove()
        if self.pending:
            self.fail_all(WHY_CONNECT_FAIL)
        self.out = []
        self.queued = 0
        self._release()

    def _connect_timeout(self):
        """The cluster's connect_timeout passed with the connect not done: give it up whole.
        The connect is cancelled, and if it completes in this same loop pass anyway,
        connection_made finds the connection closed and sends nothing on it. (Cancelling
        a create_connection() after connection_made, as asyncio.wait_for() can, closes the
        transport with no connection_lost: a connection paused by the requests it was
        given then kept the listener paused for good.)"""
        self.connect_timer = None
        if self.connected or self.closed:
            return
        self.cluster.upstream_cx_connect_timeout.inc()
        task = self.connect_task
        self.connect_failed(None)
        if task is not None:
            task.cancel()

    cdef void shut(self):
        """Closes it from our side: at once if its buffer is full (a peer that does not
        read would keep a graceful close, and the listener's pause, pending for good)."""
        self.local_close = True
        if self.transport is not None:
            if self.tpaused:
                self.transport.abort()
            else:
                self.transport.close()

    def sweep(self, double now):
        """Answers requests past their deadline with a timeout reply (the upstream reply,
        if it comes later, is dropped)."""
        cdef Pending p
        cdef list touched = []
        expired = [k for k, p in self.pending.items() if p.deadline <= now]
        for k in expired:
            p = self.pending.pop(k)
            self.cfg.st.upstream_rq_timeout.inc()
            self.cluster.upstream_rq_timeout.inc()
            self.host.rq_timeout += 1
            self._done_c(p, now, False)
            p.down.local_error(p.frame, WHY_TIMEOUT)
            if p.down not in touched:
                touched.append(p.down)
        for d in touched:
            (<DownstreamConn>d).flush()
        return len(self.pending)


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
        cdef bint want = not self.write_paused and self.cfg.upstream_paused == 0
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
        r.proto = cfg.proto
        r.frame = f
        r.transport = self.transport
        try:
            return nr.st.check(nr.policies, r, &policy)
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
        if cfg._stopped:
            self.local_error(f, WHY_DRAINING)
            return
        if cfg.rbac is not None and not self.rbac_allows(f):
            self.local_error(f, WHY_RBAC)
            return
        r = cfg.table.match(cfg.proto, f)
        if r is None:
            st.route_missing.inc()
            self.local_error(f, WHY_NO_ROUTE)
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
        if cfg.proto == P_BOLT:
            if u.next_id > 0x7fffffff:
                u.next_id = 1
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
        u.send(data)
        if not u.dirty:
            u.dirty = True
            self.dirty.append(u)


cdef class RpcProxyConfig:
    def __init__(self, int proto, str stat_prefix, RpcRouteTable table, dict clusters,
                 Store store, loop, double default_timeout=3.0, int max_frame=16 << 20,
                 int conns_per_host=2):
        self.proto = proto
        self.stat_prefix = stat_prefix
        self.table = table
        self.clusters = clusters
        self.loop = loop
        self.default_timeout = default_timeout
        self.max_frame = max_frame
        self.conns_per_host = conns_per_host if conns_per_host > 0 else 1
        self._draining = False
        self._stopped = False
        self.upstream_paused = 0
        self.conns = set()
        self.pools = {}
        self.rr = {}
        self.st = RpcStats(store, f"{'bolt' if proto == P_BOLT else 'dubbo'}.{stat_prefix}.")
        self.sweeper = None
        self.reaper = None
        self.reap_interval = 5.0
        self.rbac = None
        self.rbac_req = RpcRbacRequest.__new__(RpcRbacRequest)
        self._keys_src = None
        self._keys = None

    cdef tuple dubbo_keys(self):
        """The attachments a Dubbo request's parse decodes: routing's and RBAC's."""
        cdef tuple t = self.table.dubbo_keys
        if self.rbac is None:
            return t
        if t is not self._keys_src:
            names = {n.encode() for n in self.rbac.policies.header_names if not n.startswith(":")}
            self._keys = tuple(sorted(set(t) | names))
            self._keys_src = t
        return self._keys

    def protocol_factory(self):
        return DownstreamConn(self)

    cdef UpstreamConn upstream_for(self, Cluster cluster, Host host):
        cdef list pool = self.pools.get(host)
        cdef UpstreamConn u
        cdef long long i
        if pool is None:
            pool = []
            self.pools[host] = pool
            if self.reaper is None and not self._stopped:
                self.reaper = self.loop.call_later(self.reap_interval, self._reap)
        if len(pool) < self.conns_per_host:
            u = UpstreamConn(self, cluster, host)
            pool.append(u)
            cluster.upstream_cx_total.inc()
            cluster.upstream_cx_active.inc()
            cluster.cx_active += 1
            host.cx_total += 1
            host.cx_active += 1
            u.connect_timer = self.loop.call_later(cluster.connect_timeout, u._connect_timeout)
            u.connect_task = self.loop.create_task(self._connect(u))
            return u
        i = self.rr.get(host, 0)
        self.rr[host] = i + 1
        return pool[i % len(pool)]

    async def _connect(self, UpstreamConn u):
        # the connect timeout is u's own timer (_connect_timeout), not asyncio.wait_for()
        try:
            await self.loop.create_connection(
                lambda: u, u.host.address, u.host.port,
                **(u.cluster.tls.connect_kw(u.host) if u.cluster.tls is not None else {}))
        except OSError as exc:
            u.connect_failed(exc)
        except asyncio.CancelledError:
            if not u.closed:  # not by its timeout: the loop is going away
                u.connect_failed(None)
                raise
        finally:
            u.connect_task = None

    cdef void arm_sweeper(self):
        if self.sweeper is None:
            self.sweeper = self.loop.call_later(0.05, self._sweep)

    def _sweep(self):
        cdef UpstreamConn u
        self.sweeper = None
        now = self.loop.time()
        left = 0
        for pool in list(self.pools.values()):
            for u in list(pool):
                if u.pending:
                    left += u.sweep(now)
        if left:
            self.arm_sweeper()

    def _reap(self):
        """Closes the connections to hosts that left their cluster (EDS/DNS update, cluster
        replaced) once they carry no request: nothing routes to them any more, and they
        would stay open, and in `pools`, for good."""
        cdef UpstreamConn u
        cdef Host h
        cdef Cluster cl
        self.reaper = None
        for h, pool in list(self.pools.items()):
            if not pool:  # its connections are gone: made again on demand
                del self.pools[h]
                self.rr.pop(h, None)
                continue
            gone = h.removed
            if not gone:
                cl = (<UpstreamConn>pool[0]).cluster
                gone = self.clusters.get(cl.name) is not cl or h not in cl.hosts
            if not gone or any((<UpstreamConn>u).pending for u in pool):
                continue
            del self.pools[h]
            self.rr.pop(h, None)
            for u in pool:
                (<UpstreamConn>u).shut()
        if self.pools and not self._stopped:
            self.reaper = self.loop.call_later(self.reap_interval, self._reap)

    def close_all(self):
        """Closes every downstream and upstream connection (stop)."""
        cdef UpstreamConn u
        self._draining = True
        self._stopped = True
        if self.sweeper is not None:
            self.sweeper.cancel()
            self.sweeper = None
        if self.reaper is not None:
            self.reaper.cancel()
            self.reaper = None
        for d in list(self.conns):
            d.close()
        for pool in list(self.pools.values()):
            for u in list(pool):
                u.shut()

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

    @property
    def upstream_connections(self):
        return sum(len(p) for p in self.pools.values())


PROTO_BOLT = P_BOLT
PROTO_DUBBO = P_DUBBO
SM = {"exact": SM_EXACT, "prefix": SM_PREFIX, "suffix": SM_SUFFIX, "contains": SM_CONTAINS,
      "regex": SM_REGEX, "any": SM_ANY}
