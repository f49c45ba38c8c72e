# Closes a cluster's upstream connections idle past its idle_timeout; see idle_sweep.pxd.

from sofamesh._core.http_common cimport mono

# a timer fires up to a millisecond early by the clock read here (uvloop rounds to ms)
cdef double SLACK = 0.002


cdef class IdleSweep:
    def __init__(self, double timeout):
        self.timeout = timeout
        self.conns = []

    cdef int add(self, object conn, object loop) except -1:
        self.conns.append(conn)
        if self.timer is None:
            self.loop = loop
            self.timer = loop.call_later(self.timeout, self._run)
        return 0

    def _run(self):
        cdef double now = mono() + SLACK, first = -1.0, d
        cdef list keep = []
        self.timer = None
        for c in self.conns:
            d = c._idle_check(now, self.timeout)
            if d >= 0:
                keep.append(c)
                if first < 0 or d < first:
                    first = d
        self.conns = keep
        if keep:
            # at least every eighth of the timeout while connections are listed: a listed
            # connection's reuse is only seen here (its rq_count moved), so one that went
            # idle again just after a look is closed at most timeout/8 late (never early)
            self.timer = self.loop.call_later(
                max(min(first - now, self.timeout / 8), 0.0) + SLACK, self._run)

    def close(self):
        """Forget every connection and stop the timer (the cluster is gone)."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.conns = []

    def __len__(self):
        return len(self.conns)
