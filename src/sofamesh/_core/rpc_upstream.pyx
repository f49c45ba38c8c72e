# RPC proxy, upstream side: multiplexed connections to a cluster's hosts (a few per host,
# request ids rewritten) and their pools. See rpc_upstream.pxd for the contract.
#
# An UpstreamConn carries the calls of many clients (RpcClient: rpc_proxy.DownstreamConn);
# replies are matched to their call by the rewritten id, restored to the client's id and
# gathered per client, one write per client per read. Flow control: while any upstream
# connection of the listener is full (or has more than QUEUE_HIGH bytes queued while it
# connects), no client of the listener is read (they share the connections).

import asyncio

from sofamesh._core.stats cimport Store
from sofamesh._core.upstream cimport (Cluster, Host, OUTCOME_CONNECT_FAILED, OUTCOME_EXT_FAILED,
                                      OUTCOME_EXT_SUCCESS, OUTCOME_TIMEOUT)
from sofamesh._core.codecs.rpcframe cimport ProtocolError, RpcFrame
from sofamesh._core.rpc_tracing cimport trace_reply
from sofamesh._core.upstream import connect as dial_host
from sofamesh._core.codecs.bolt cimport (
    BoltFrame, BoltDecoder, rewrite_request_id as bolt_rewrite, heartbeat_ack as bolt_hb_ack,
)
from sofamesh._core.codecs.dubbo cimport (
    DubboFrame, DubboDecoder, rewrite_request_id as dubbo_rewrite,
    heartbeat_response as dubbo_hb_reply,
)


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


cdef class RpcClient:
    """What an upstream connection needs of the client connections whose calls it carries
    (implemented by rpc_proxy.DownstreamConn)."""

    cdef void write(self, bytes data):
        pass

    cdef void flush(self):
        pass

    cdef void local_error(self, object f, int why):
        pass

    cdef void set_reading(self):
        pass


cdef class Pending:
    pass


cdef class UpstreamConn:
    """One upstream connection carrying many downstream requests (ids rewritten)."""

    def __init__(self, RpcUpstreams cfg, Cluster cluster, Host host):
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
        cdef RpcClient d
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
                    self.host.outcome(OUTCOME_EXT_FAILED)  # outlier detection
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
            if (<RpcFrame>p.frame).trace is not None:
                trace_reply(p.frame, f)
            self.host.outcome(OUTCOME_EXT_SUCCESS if ok else OUTCOME_EXT_FAILED)  # outlier
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
                (<RpcClient>d).set_reading()

    cdef void _release(self):
        if not self.paused:
            return
        self.paused = False
        if self.cfg.upstream_paused > 0:
            self.cfg.upstream_paused -= 1
            if self.cfg.upstream_paused == 0:
                for d in self.cfg.conns:
                    (<RpcClient>d).set_reading()

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
            self.host.outcome(OUTCOME_CONNECT_FAILED)  # outlier detection (a local origin)
            p.down.local_error(p.frame, why)
            if p.down not in touched:
                touched.append(p.down)
        for d in touched:
            (<RpcClient>d).flush()

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
            self.host.outcome(OUTCOME_TIMEOUT)  # outlier detection
            p.down.local_error(p.frame, WHY_TIMEOUT)
            if p.down not in touched:
                touched.append(p.down)
        for d in touched:
            (<RpcClient>d).flush()
        return len(self.pending)


cdef class RpcUpstreams:
    """The upstream connection pools of one listener (RpcProxyConfig extends it)."""

    def __init__(self, int proto, dict clusters, loop, RpcStats st, int max_frame,
                 int conns_per_host):
        self.proto = proto
        self.clusters = clusters
        self.loop = loop
        self.st = st
        self.max_frame = max_frame
        self.conns_per_host = conns_per_host if conns_per_host > 0 else 1
        self._stopped = False
        self.upstream_paused = 0
        self.conns = set()
        self.pools = {}
        self.rr = {}
        self.sweeper = None
        self.reaper = None
        self.reap_interval = 5.0

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
            await dial_host(self.loop, lambda: u, u.host, u.cluster)
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

    cdef void close_upstreams(self):
        """Stops the timers and closes every upstream connection (stop)."""
        cdef UpstreamConn u
        self._stopped = True
        if self.sweeper is not None:
            self.sweeper.cancel()
            self.sweeper = None
        if self.reaper is not None:
            self.reaper.cancel()
            self.reaper = None
        for pool in list(self.pools.values()):
            for u in list(pool):
                u.shut()

    @property
    def upstream_connections(self):
        return sum(len(p) for p in self.pools.values())
