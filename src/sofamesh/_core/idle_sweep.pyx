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
            # never sooner than a sixteenth of the timeout: connections reused between
            # sweeps cannot make it run once per request (each run walks the whole list)
            self.timer = self.loop.call_later(max(first - now + SLACK, self.timeout / 16),
                                              self._run)

    def close(self):
        """Forget every connection and stop the timer (the cluster is gone)."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.conns = []

    def __len__(self):
        return len(self.conns)
