# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""xDS resources read from their protobuf wire bytes, for the shapes a control plane sends
by the thousand.

`plain_assignment(raw)`: the hosts of a plain `envoy.config.endpoint.v3.ClusterLoadAssignment`
(cluster_name; endpoints with a locality, a load_balancing_weight and lb_endpoints of a
socket address, a health status and a load_balancing_weight), read in one pass and checked
against the rules those fields carry; None for anything else (another field, a field given
twice, a rule broken, an address that is not an IP), and then the caller takes the full path
(proxy/dynamic.py: the generated rules, then xds_shapes.hosts_from_assignment), which says
what is wrong if anything is. Field numbers are those of the generated descriptors
(tests/unit/test_xds_wire.py compares the result with the full path's on generated and
random assignments).

`strip_fields(raw, paths)`: the wire bytes without the fields at `paths` (tuples of field
numbers through nested messages), e.g. a cluster's shape without its name.

PERF(benchmarks/xds_scale.py): at 10,000 services the full path of an assignment (the
plain-size check, the host walk over protobuf objects, a deterministic serialization for the
change check) was about half of applying the EDS response.
"""

cimport cython
from libc.stdint cimport uint64_t

from sofamesh._core.upstream cimport Host


cdef extern from "Python.h":
    object PyUnicode_DecodeUTF8(const char* s, Py_ssize_t size, const char* errors)

cdef extern from "<arpa/inet.h>" nogil:
    int inet_pton(int af, const char* src, void* dst)

cdef extern from "<sys/socket.h>" nogil:
    int AF_INET
    int AF_INET6

cdef enum:
    WT_VARINT = 0
    WT_I64 = 1
    WT_LEN = 2
    WT_I32 = 5


@cython.final
cdef class _Reader:
    """A cursor over a slice of a bytes object: one tag, then its value."""
    cdef const unsigned char* p
    cdef Py_ssize_t pos
    cdef Py_ssize_t end
    cdef int field
    cdef int wtype
    cdef uint64_t num        # a varint's value
    cdef Py_ssize_t start    # a length-delimited value's bytes: [start, start + size)
    cdef Py_ssize_t size

    cdef inline bint varint(self, uint64_t* out) noexcept:
        cdef uint64_t v = 0
        cdef int shift = 0
        cdef unsigned char b
        while self.pos < self.end and shift < 64:
            b = self.p[self.pos]
            self.pos += 1
            v |= (<uint64_t>(b & 0x7F)) << shift
            if b < 0x80:
                out[0] = v
                return True
            shift += 7
        return False

    cdef bint next(self) noexcept:
        """The next field: False at the end or on bytes that are not protobuf."""
        cdef uint64_t tag, n
        if self.pos >= self.end or not self.varint(&tag):
            return False
        self.field = <int>(tag >> 3)
        self.wtype = <int>(tag & 7)
        if self.field == 0:
            return False
        if self.wtype == WT_VARINT:
            return self.varint(&self.num)
        if self.wtype == WT_LEN:
            if not self.varint(&n) or n > <uint64_t>(self.end - self.pos):
                return False
            self.start = self.pos
            self.size = <Py_ssize_t>n
            self.pos += self.size
            return True
        if self.wtype == WT_I64:
            self.pos += 8
            return self.pos <= self.end
        if self.wtype == WT_I32:
            self.pos += 4
            return self.pos <= self.end
        return False  # groups: not in xDS


cdef inline _Reader _open(const unsigned char* p, Py_ssize_t start, Py_ssize_t size):
    cdef _Reader r = _Reader.__new__(_Reader)
    r.p = p
    r.pos = start
    r.end = start + size
    return r


cdef inline object _text(const unsigned char* p, Py_ssize_t start, Py_ssize_t size):
    """UTF-8 text, or None when it is not UTF-8."""
    try:
        return PyUnicode_DecodeUTF8(<const char*>p + start, size, NULL)
    except UnicodeDecodeError:
        return None


cdef long _uint32_value(const unsigned char* p, Py_ssize_t start, Py_ssize_t size):
    """A google.protobuf.UInt32Value's value, or -1 when it holds anything else."""
    cdef _Reader r = _open(p, start, size)
    cdef long v = 0
    cdef bint seen = False
    while r.pos < r.end:
        if not r.next() or r.field != 1 or r.wtype != WT_VARINT or seen:
            return -1
        if r.num > 0xFFFFFFFF:
            return -1
        v = <long>r.num
        seen = True
    return v


cdef object _locality(const unsigned char* p, Py_ssize_t start, Py_ssize_t size):
    """A Locality as "region/zone/sub_zone", or None."""
    cdef _Reader r = _open(p, start, size)
    parts = ["", "", ""]
    cdef int seen = 0
    while r.pos < r.end:
        if not r.next() or r.wtype != WT_LEN or not 1 <= r.field <= 3:
            return None
        if seen & (1 << r.field):
            return None
        seen |= 1 << r.field
        s = _text(p, r.start, r.size)
        if s is None:
            return None
        parts[r.field - 1] = s
    return f"{parts[0]}/{parts[1]}/{parts[2]}"


cdef bint _ip_ok(str address):
    cdef bytes b = address.encode()
    cdef unsigned char buf[16]
    if b":" in b:
        return inet_pton(AF_INET6, b, buf) == 1
    return inet_pton(AF_INET, b, buf) == 1


cdef object _socket_address(const unsigned char* p, Py_ssize_t start, Py_ssize_t size):
    """(address, port) of a SocketAddress with an IP address, or None."""
    cdef _Reader r = _open(p, start, size)
    address = None
    cdef uint64_t port = 0
    cdef int seen = 0
    while r.pos < r.end:
        if not r.next() or r.field > 30 or seen & (1 << r.field):
            return None
        seen |= 1 << r.field
        if r.field == 2 and r.wtype == WT_LEN:
            address = _text(p, r.start, r.size)
            if address is None:
                return None
        elif r.field == 3 and r.wtype == WT_VARINT:
            port = r.num
        else:
            return None  # protocol, named_port, resolver_name, ipv4_compat: the full path
    if not address or port > 65535 or not _ip_ok(address):
        return None
    return (address, <int>port)


cdef object _one_field(const unsigned char* p, Py_ssize_t start, Py_ssize_t size, int field):
    """(start, size) of a message that holds nothing but length-delimited field `field`
    once, or None."""
    cdef _Reader r = _open(p, start, size)
    if not r.next() or r.field != field or r.wtype != WT_LEN or r.pos != r.end:
        return None
    return (r.start, r.size)


cdef object _lb_endpoint(const unsigned char* p, Py_ssize_t start, Py_ssize_t size):
    """(address, port, weight, healthy) of a plain LbEndpoint, or None."""
    cdef _Reader r = _open(p, start, size)
    cdef int seen = 0
    cdef long weight = 1
    cdef uint64_t status = 0
    sa = None
    while r.pos < r.end:
        if not r.next() or r.field > 30 or seen & (1 << r.field):
            return None
        seen |= 1 << r.field
        if r.field == 1 and r.wtype == WT_LEN:  # endpoint { address { socket_address } }
            span = _one_field(p, r.start, r.size, 1)
            if span is None:
                return None
            span = _one_field(p, span[0], span[1], 1)
            if span is None:
                return None
            sa = _socket_address(p, span[0], span[1])
            if sa is None:
                return None
        elif r.field == 2 and r.wtype == WT_VARINT:  # health_status: defined values
            if r.num > 5:
                return None
            status = r.num
        elif r.field == 4 and r.wtype == WT_LEN:  # load_balancing_weight: gte 1
            weight = _uint32_value(p, r.start, r.size)
            if weight < 1:
                return None
        else:
            return None
    if sa is None:
        return None
    # UNHEALTHY, DRAINING and TIMEOUT endpoints are kept but not chosen
    return (sa[0], sa[1], weight, status not in (2, 3, 4))


def plain_assignment(bytes raw not None):
    """(cluster_name, [Host, ...]) of a plain ClusterLoadAssignment, or None (see the
    module's text). Hosts as xds_shapes.hosts_from_assignment makes them."""
    cdef const unsigned char* p = <const unsigned char*>raw
    cdef _Reader r = _open(p, 0, len(raw))
    cdef _Reader e
    cdef Host h
    cdef long lw
    cdef bint named = False
    name = None
    hosts = []
    while r.pos < r.end:
        if not r.next() or r.wtype != WT_LEN:
            return None
        if r.field == 1:  # cluster_name: min_len 1
            if named:
                return None
            named = True
            name = _text(p, r.start, r.size)
            if not name:
                return None
        elif r.field == 2:  # endpoints: LocalityLbEndpoints
            e = _open(p, r.start, r.size)
            locality = "//"
            lw = 0
            lbes = []
            seen = 0
            while e.pos < e.end:
                if not e.next() or e.wtype != WT_LEN:
                    return None
                if e.field == 2:
                    lbe = _lb_endpoint(p, e.start, e.size)
                    if lbe is None:
                        return None
                    lbes.append(lbe)
                    continue
                if e.field > 3 or seen & (1 << e.field):
                    return None  # priority, metadata, proximity: the full path
                seen |= 1 << e.field
                if e.field == 1:
                    locality = _locality(p, e.start, e.size)
                    if locality is None:
                        return None
                else:  # 3: load_balancing_weight, gte 1
                    lw = _uint32_value(p, e.start, e.size)
                    if lw < 1:
                        return None
            for address, port, weight, healthy in lbes:
                h = Host(address, port, weight, "")
                h.priority = 0
                h.locality = locality
                h.locality_weight = lw
                h.hc_port = 0
                h.healthy = healthy
                hosts.append(h)
        else:
            return None  # policy, named_endpoints: the full path
    if not named:
        return None
    return name, hosts


def strip_fields(bytes raw not None, tuple paths):
    """`raw` without the fields at `paths`: each a tuple of field numbers, the last one
    removed, the ones before it the length-delimited messages it sits in (a message that
    holds one of them is rewritten with its length). Unknown bytes are kept as they are;
    None when `raw` is not protobuf."""
    return _strip(<const unsigned char*>raw, 0, len(raw), paths, 0)


cdef object _strip(const unsigned char* p, Py_ssize_t start, Py_ssize_t size, tuple paths,
                   int depth):
    cdef _Reader r = _open(p, start, size)
    cdef Py_ssize_t field_start
    out = bytearray()
    while r.pos < r.end:
        field_start = r.pos
        if not r.next():
            return None
        drop = False
        inner = None
        for path in paths:
            if len(path) > depth and path[depth] == r.field:
                if len(path) == depth + 1:
                    drop = True
                elif r.wtype == WT_LEN:
                    inner = [q for q in paths if len(q) > depth + 1 and q[depth] == r.field]
        if drop:
            continue
        if inner is not None:
            sub = _strip(p, r.start, r.size, tuple(inner), depth + 1)
            if sub is None:
                return None
            out += _varint_bytes((<uint64_t>r.field << 3) | WT_LEN)
            out += _varint_bytes(len(sub))
            out += sub
        else:
            out += (<const char*>p)[field_start:r.pos]
    return bytes(out)


cdef bytes _varint_bytes(uint64_t v):
    cdef unsigned char buf[10]
    cdef int n = 0
    while v >= 0x80:
        buf[n] = <unsigned char>((v & 0x7F) | 0x80)
        v >>= 7
        n += 1
    buf[n] = <unsigned char>v
    return (<const char*>buf)[:n + 1]


def repeated(bytes raw not None, int field):
    """The bytes of each length-delimited `field` at the top of `raw`, in order (a repeated
    message field's elements as the parsed message holds them); None when `raw` is not
    protobuf."""
    cdef const unsigned char* p = <const unsigned char*>raw
    cdef _Reader r = _open(p, 0, len(raw))
    out = []
    while r.pos < r.end:
        if not r.next():
            return None
        if r.field == field:
            if r.wtype != WT_LEN:
                return None
            out.append((<const char*>p)[r.start:r.start + r.size])
    return out


cdef inline bint _name_char(unsigned char c) noexcept:
    return (48 <= c <= 57) or (65 <= c <= 90) or (97 <= c <= 122) or c == 95


cdef bint _plain_domain(const unsigned char* p, Py_ssize_t n) noexcept:
    """^[A-Za-z0-9_][A-Za-z0-9_.\\-]*(:[0-9]{1,5})?$ (xds/checks.py's _PLAIN_DOMAIN)."""
    cdef Py_ssize_t i = 1, j
    if n == 0 or not _name_char(p[0]):
        return False
    while i < n and (_name_char(p[i]) or p[i] == 46 or p[i] == 45):
        i += 1
    if i == n:
        return True
    if p[i] != 58 or not 1 <= n - i - 1 <= 5:
        return False
    for j in range(i + 1, n):
        if not 48 <= p[j] <= 57:
            return False
    return True


# Route.route (2).cluster (1), and Route.name (14)
cdef tuple _ROUTE_CLUSTER = ((2, 1),)
cdef tuple _ROUTE_UNNAMED = ((2, 1), (14,))


def vhost_shape(bytes raw not None, bint route_names):
    """(name, domains, key, routes) of a VirtualHost's bytes whose name is set and whose
    domains are all plain (xds/checks.py), else None. key: the bytes without the name, the
    domains and each route's cluster (and, with route_names, each route's name); routes:
    (name, cluster or None) of each route, in order. None as well when a route's cluster is
    set empty (a rule the full check reports) or the bytes are not protobuf."""
    cdef const unsigned char* p = <const unsigned char*>raw
    cdef _Reader r = _open(p, 0, len(raw))
    cdef _Reader q
    cdef Py_ssize_t field_start
    name = None
    domains = []
    routes = []
    out = bytearray()
    cdef tuple strip = _ROUTE_UNNAMED if route_names else _ROUTE_CLUSTER
    cdef bint other_spec
    while r.pos < r.end:
        field_start = r.pos
        if not r.next():
            return None
        if r.field == 1 and r.wtype == WT_LEN:
            if name is not None:
                return None
            name = _text(p, r.start, r.size)
            if not name:
                return None
        elif r.field == 2 and r.wtype == WT_LEN:
            if not _plain_domain(p + r.start, r.size):
                return None
            domains.append(PyUnicode_DecodeUTF8(<const char*>p + r.start, r.size, NULL))
        elif r.field == 3 and r.wtype == WT_LEN:
            rname = ""
            cluster = None
            q = _open(p, r.start, r.size)
            while q.pos < q.end:
                if not q.next():
                    return None
                if q.field == 14 and q.wtype == WT_LEN:
                    rname = _text(p, q.start, q.size)
                elif q.field == 2 and q.wtype == WT_LEN:
                    a = _open(p, q.start, q.size)
                    other_spec = False
                    while a.pos < a.end:
                        if not a.next():
                            return None
                        if a.field == 1 and a.wtype == WT_LEN:
                            if a.size == 0:
                                return None
                            cluster = _text(p, a.start, a.size)
                            if cluster is None:
                                return None
                        elif a.field in (2, 3, 37, 39):  # the oneof's other members
                            other_spec = True
                    if cluster is not None and other_spec:
                        return None  # which one the message holds depends on their order
            if rname is None:
                return None
            routes.append((rname, cluster))
            sub = _strip(p, r.start, r.size, strip, 0)
            if sub is None:
                return None
            out += _varint_bytes((3 << 3) | WT_LEN)
            out += _varint_bytes(len(sub))
            out += sub
        else:
            out += (<const char*>p)[field_start:r.pos]
    if name is None or not domains:
        return None
    return name, domains, bytes(out), routes


def only_fields(bytes raw not None, frozenset allowed):
    """True when the top of `raw` holds no field but those numbered in `allowed` (False
    when it is not protobuf)."""
    cdef const unsigned char* p = <const unsigned char*>raw
    cdef _Reader r = _open(p, 0, len(raw))
    while r.pos < r.end:
        if not r.next() or r.field not in allowed:
            return False
    return True
