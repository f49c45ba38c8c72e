# tcp_proxy (Envoy's envoy.filters.network.tcp_proxy): each downstream connection gets its
# own upstream connection to a host of the cluster; bytes flow both ways untouched. Used
# for HSF ports (opaque TCP) and any other TCP. Half-close is propagated; back-pressure
# pauses the reading side while the writing side's buffer is full. With `access_log`, each
# connection's entry (TcpDownstream.log_entry) goes to the loggers when it closes.

import asyncio
import os
import time

from sofamesh._core.upstream cimport (Cluster, Host, OUTCOME_CONNECT_FAILED,
                                      OUTCOME_CONNECT_SUCCESS_FINAL, OUTCOME_TIMEOUT)
from sofamesh._core.stats cimport Store
from sofamesh._core.router cimport rng_next
from sofamesh._core.upstream import connect as dial_host
from sofamesh.proxy.original_dst import local_address as _local_address
from sofamesh.proxy.internal_listener import upstream_host as _upstream_host


cdef class TcpProxyConfig:
    def __init__(self, str stat_prefix, list weighted, dict clusters, Store store, loop,
                 double connect_timeout=5.0, double idle_timeout_s=3600.0,
                 tuple access_logs=(), str listener_stat_name=None):
        p = f"tcp.{stat_prefix}."
        if listener_stat_name:      # listener.<name>.downstream_cx_* (Envoy counts them all)
            lp = f"listener.{listener_stat_name}."
            self.lcx_total = store.counter(lp + "downstream_cx_total")
            self.lcx_destroy = store.counter(lp + "downstream_cx_destroy")
            self.lcx_active = store.gauge(lp + "downstream_cx_active")
        self.access_logs = access_logs
        self.stat_prefix = stat_prefix
        self.weighted = weighted
        self.total_weight = sum(w for _, w in weighted)
        self.clusters = clusters
        self.loop = loop
        self.connect_timeout = connect_timeout
        self.conns = set()
        self.draining = False
        self.idle_timeout_s = idle_timeout_s
        self.sweeper = None
        self.downstream_cx_total = store.counter(p + "downstream_cx_total")
        self.downstream_cx_no_route = store.counter(p + "downstream_cx_no_route")
        self.upstream_flush_total = store.counter(p + "upstream_flush_total")
        self.downstream_cx_rx_bytes_total = store.counter(p + "downstream_cx_rx_bytes_total")
        self.downstream_cx_tx_bytes_total = store.counter(p + "downstream_cx_tx_bytes_total")
        self.idle_timeout = store.counter(p + "idle_timeout")
        self.downstream_cx_active = store.gauge(p + "downstream_cx_active")

    cdef str pick(self):
        cdef long long r
        if len(self.weighted) == 1:
            return self.weighted[0][0]
        r = <long long>(rng_next() % <unsigned long long>(self.total_weight or 1))
        for name, w in self.weighted:
            if r < w:
                return name
            r -= w
        return self.weighted[len(self.weighted) - 1][0]

    def protocol_factory(self):
        return TcpDownstream(self)

    def adopt(self, ds_sock, up_sock, str cluster, tuple host):
        """Hot restart: a connection the previous process handed over with its upstream
        connection (TcpDownstream.hand_over there): served on from the next byte either way,
        both still in the kernel. False (both sockets closed): its cluster or host is not
        here any more."""
        cdef Cluster cl = self.clusters.get(cluster)
        cdef Host found = None, h
        if cl is not None:
            for h in cl.hosts:
                if h.address == host[0] and h.port == host[1]:
                    found = h
                    break
        if found is None:
            ds_sock.close()
            up_sock.close()
            return False
        d = TcpDownstream(self)
        d.adopted = (cl, found, up_sock)
        self.loop.create_task(self.loop.connect_accepted_socket(lambda: d, ds_sock))
        return True

    def arm_sweeper(self):
        if self.sweeper is None and self.idle_timeout_s > 0:
            self.sweeper = self.loop.call_later(min(self.idle_timeout_s / 4, 1.0), self._sweep)

    def _sweep(self):
        """Closes connections with no bytes either way for idle_timeout (Envoy's
        tcp_proxy idle_timeout, 1 h by default)."""
        cdef TcpDownstream d
        self.sweeper = None
        deadline = self.loop.time() - self.idle_timeout_s
        for d in list(self.conns):
            if d.last_active <= deadline and not d.closed:
                self.idle_timeout.inc()
                d.close()
        if self.conns:
            self.arm_sweeper()

    def close_all(self):
        self.draining = True
        if self.sweeper is not None:
            self.sweeper.cancel()
            self.sweeper = None
        for d in list(self.conns):
            d.close()


cdef class TcpUpstream:
    def __init__(self, TcpDownstream down, Cluster cluster, Host host):
        self.down = down
        self.cluster = cluster
        self.host = host
        self.transport = None

    def connection_made(self, transport):
        self.transport = transport
        if self.down.cfg.access_logs:
            self.down.up_local = transport.get_extra_info("sockname")
        self.host.outcome(OUTCOME_CONNECT_SUCCESS_FINAL)  # outlier detection (Envoy's tcp_proxy)
        self.down.upstream_ready()

    def data_received(self, data):
        self.down.last_active = self.down.cfg.loop.time()
        self.cluster.upstream_cx_rx_bytes_total.add(len(data))
        self.down.cfg.downstream_cx_tx_bytes_total.add(len(data))
        self.down.tx += len(data)
        if not self.down.closed:
            self.down.transport.write(data)

    def eof_received(self):
        self.down.eof_out = True
        if self.down.eof_in:
            self.down.close()   # both ways half-closed: the connection is done (Envoy)
            return False
        if not self.down.closed and self.down.transport.can_write_eof():
            self.down.transport.write_eof()
            return True
        return False

    def connection_lost(self, exc):
        self.transport = None
        self.cluster.upstream_cx_active.dec()
        self.cluster.cx_active -= 1
        self.host.cx_active -= 1
        self.cluster.upstream_cx_destroy.inc()
        self.down.close()

    def pause_writing(self):
        if not self.down.closed:
            self.down.transport.pause_reading()

    def resume_writing(self):
        if not self.down.closed and not self.down.moving:
            self.down.transport.resume_reading()


cdef class TcpDownstream:
    def __init__(self, TcpProxyConfig cfg):
        self.cfg = cfg
        self.transport = None
        self.up = None
        self.early = []
        self.closed = False
        self.up_ready = False
        self.flags = ""
        self.fail_reason = ""

    def connection_made(self, transport):
        cdef Cluster cl
        cdef Host h
        self.transport = transport
        self.last_active = self.cfg.loop.time()
        if self.cfg.access_logs:
            self.wall_start = time.time()
            self.mono_start = self.last_active
            self.peer = transport.get_extra_info("peername")
            self.local = _local_address(transport)
        self.cfg.conns.add(self)
        self.cfg.arm_sweeper()
        self.cfg.downstream_cx_total.inc()
        self.cfg.downstream_cx_active.inc()
        if self.cfg.lcx_total is not None:
            self.cfg.lcx_total.inc()
            self.cfg.lcx_active.inc()
        if self.adopted is not None:    # hot restart: its upstream connection came with it
            cl, h = self.adopted[0], self.adopted[1]
        else:
            cl = self.cfg.clusters.get(self.cfg.pick())
            if cl is None:
                h = None
            elif cl.original_dst is not None:   # ORIGINAL_DST: proxy/original_dst.py
                h = cl.original_dst.pick(transport, None)
            else:
                h = cl.choose()
            if h is not None and self.cfg.conn_state is not None:
                # shared filter state to an internal listener: a host (pool) of its own
                h = _upstream_host(cl, h, transport, self.cfg.conn_state)
        if h is None:
            self.flags = "UH"
            if cl is not None:         # (Envoy: no_route only when the cluster is missing)
                cl.upstream_cx_none_healthy.inc()
            else:
                self.cfg.downstream_cx_no_route.inc()
            transport.close()
            return
        self.up = TcpUpstream(self, cl, h)
        cl.upstream_cx_total.inc()
        cl.upstream_cx_active.inc()
        cl.cx_active += 1
        h.cx_total += 1
        h.cx_active += 1
        transport.pause_reading()
        self.cfg.loop.create_task(self._connect())

    async def _connect(self):
        cdef TcpUpstream up = self.up
        if self.adopted is not None:
            sock = self.adopted[2]
            self.adopted = None
            try:
                await self.cfg.loop.create_connection(lambda: up, sock=sock)
                # libuv's from here: uvloop attaches the object only after connection_made,
                # which may already have closed the transport (proxy/internal_listener.py)
                sock.detach()
            except OSError:
                up.cluster.upstream_cx_active.dec()
                up.cluster.cx_active -= 1
                up.host.cx_active -= 1
                self.close()
            return
        try:
            await asyncio.wait_for(
                dial_host(self.cfg.loop, lambda: up, up.host, up.cluster),
                up.cluster.connect_timeout)
        except (OSError, asyncio.TimeoutError) as exc:
            if isinstance(exc, asyncio.TimeoutError):
                up.cluster.upstream_cx_connect_timeout.inc()
            # outlier detection, as Envoy's tcp_proxy reports a failed connect
            up.host.outcome(OUTCOME_TIMEOUT if isinstance(exc, asyncio.TimeoutError)
                            else OUTCOME_CONNECT_FAILED)
            up.cluster.upstream_cx_connect_fail.inc()
            self.flags = "UF"
            if isinstance(exc, OSError) and exc.errno:
                self.fail_reason = "delayed connect error: " + os.strerror(exc.errno)
            up.host.cx_connect_fail += 1
            up.cluster.upstream_cx_active.dec()
            up.cluster.cx_active -= 1
            up.host.cx_active -= 1
            self.close()

    def upstream_ready(self):
        self.up_ready = True
        if self.closed:
            self.up.transport.close()
            return
        if self.early:
            self.up.transport.writelines(self.early)
            self.early = []
        self.transport.resume_reading()

    def data_received(self, data):
        self.last_active = self.cfg.loop.time()
        self.cfg.downstream_cx_rx_bytes_total.add(len(data))
        self.rx += len(data)
        if self.up_ready and self.up.transport is not None:
            self.up.cluster.upstream_cx_tx_bytes_total.add(len(data))
            self.up.transport.write(data)
        else:
            # uvloop starts reading after connection_made even though it paused there:
            # pause now, so a client cannot pile bytes up while the connect is in progress
            self.early.append(bytes(data))
            self.transport.pause_reading()

    def feed_first(self, data):
        self.rx += len(data)
        self.early.append(bytes(data))

    def eof_received(self):
        self.eof_in = True
        if self.eof_out:
            return False        # both ways half-closed: close (connection_lost closes upstream)
        if self.up is not None and self.up.transport is not None and \
                self.up.transport.can_write_eof():
            self.up.transport.write_eof()
            return True
        return False

    def connection_lost(self, exc):
        if not self.closed:
            self.closed = True
        self.cfg.conns.discard(self)
        self.cfg.downstream_cx_active.dec()
        if self.cfg.lcx_total is not None:
            self.cfg.lcx_active.dec()
            self.cfg.lcx_destroy.inc()
        if self.up is not None and self.up.transport is not None:
            self.up.transport.close()
        if self.cfg.access_logs and not self.moved:
            entry = self.log_entry()
            for al in self.cfg.access_logs:
                al.log_tcp(entry)

    def log_entry(self):
        """(start time s, duration s, client (ip, port), local (ip, port), upstream host
        (ip, port) or None, upstream local (ip, port) or None (not connected), cluster, bytes
        received, bytes sent, response flag, upstream failure reason) of this connection,
        for a TCP access logger."""
        cdef TcpUpstream up = self.up
        upstream = cluster = None
        if up is not None:
            cluster = up.cluster.name
            upstream = (up.host.address, up.host.port)
        return (self.wall_start, self.cfg.loop.time() - self.mono_start, self.peer,
                self.local, upstream, self.up_local, cluster, self.rx, self.tx, self.flags,
                self.fail_reason)

    def pause_writing(self):
        if self.up is not None and self.up.transport is not None:
            self.up.transport.pause_reading()

    def resume_writing(self):
        if self.up is not None and self.up.transport is not None and not self.moving:
            self.up.transport.resume_reading()

    def hand_over(self):
        """Hot restart (proxy/hot_restart.py): a plain connection whose upstream is
        connected, neither way half-closed and nothing held back, moves whole with its
        upstream connection. First call: both sides stop reading (what comes meanwhile
        waits in the kernel). Once both have written everything: (downstream fd, upstream
        fd, cluster, (host, port)), duplicates for the new process (None until then);
        `handed_over()` then drops both sides here."""
        cdef TcpUpstream up = self.up
        if self.closed or not self.up_ready or up is None or up.transport is None or \
                self.eof_in or self.eof_out or self.early:
            return None
        t, u = self.transport, up.transport
        if t.get_extra_info("sslcontext") is not None or \
                u.get_extra_info("sslcontext") is not None:
            return None
        if not self.moving:
            self.moving = True
            t.pause_reading()
            u.pause_reading()
        if t.get_write_buffer_size() or u.get_write_buffer_size():
            return None
        ds, us = t.get_extra_info("socket"), u.get_extra_info("socket")
        if ds is None or us is None:
            return None
        return (os.dup(ds.fileno()), os.dup(us.fileno()), up.cluster.name,
                (up.host.address, up.host.port))

    def handed_over(self):
        """Both sockets go without a FIN (the new process's duplicates keep them open), and
        without an access log entry here: the new process logs the connection as it ends."""
        self.moved = True
        self.closed = True
        if self.up is not None and self.up.transport is not None:
            self.up.transport.abort()
        if self.transport is not None:
            self.transport.abort()

    def close(self):
        if not self.closed:
            self.closed = True
            if self.transport is not None:
                self.transport.close()

    def busy(self):
        return False
