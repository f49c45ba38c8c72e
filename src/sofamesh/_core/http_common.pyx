# Shared by the HTTP stream layer; see http_common.pxd.

import email.utils

from cpython.bytes cimport PyBytes_FromStringAndSize
from libc.time cimport time, time_t

from sofamesh._core.codecs.http1 cimport Head
from sofamesh._core.router cimport rng_next

cdef time_t _date_t = 0
cdef bytes _date_value = b""


cdef bytes date_value():
    global _date_t, _date_value
    cdef time_t t = time(NULL)
    if t != _date_t:
        _date_t = t
        _date_value = email.utils.formatdate(t, usegmt=True).encode()
    return _date_value


cdef const char* HEX = "0123456789abcdef"


cdef bytes uuid4():
    cdef unsigned long long a = rng_next(), b = rng_next()
    cdef unsigned char raw[16]
    cdef char out[36]
    cdef int i, j = 0
    for i in range(8):
        raw[i] = <unsigned char>(a >> (8 * i))
        raw[8 + i] = <unsigned char>(b >> (8 * i))
    raw[6] = (raw[6] & 0x0f) | 0x40
    raw[8] = (raw[8] & 0x3f) | 0x80
    for i in range(16):
        if i == 4 or i == 6 or i == 8 or i == 10:
            out[j] = 45
            j += 1
        out[j] = HEX[raw[i] >> 4]
        out[j + 1] = HEX[raw[i] & 15]
        j += 2
    return PyBytes_FromStringAndSize(out, 36)


cdef bint needs_normalizing(Head h, bint merge) noexcept:
    """The path has dot segments, percent escapes (or, with merge, '//')."""
    cdef const char* p = h.base + h.path_off
    cdef int i, n = h.path_len
    for i in range(n):
        if p[i] == 63:
            return False
        if p[i] == 37:
            return True
        if p[i] == 46 and i > 0 and p[i - 1] == 47:
            return True
        if merge and p[i] == 47 and i > 0 and p[i - 1] == 47:
            return True
    return False


_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


def _canonical_path(bytes path, bint normalize, bint merge):
    """Envoy's normalize_path (RFC 3986: unreserved %XX decoded, dot segments removed)
    and merge_slashes, on the path without its query. Rare path (config-enabled)."""
    if normalize:
        out = bytearray()
        i = 0
        while i < len(path):
            c = path[i]
            if c == 37 and i + 2 < len(path) + 0 and i + 2 <= len(path) - 1:
                try:
                    v = int(path[i + 1:i + 3], 16)
                except ValueError:
                    v = -1
                if v >= 0 and v in _UNRESERVED:
                    out.append(v)
                    i += 3
                    continue
                if v >= 0:
                    out += b"%" + path[i + 1:i + 3].upper()
                    i += 3
                    continue
            out.append(c)
            i += 1
        path = bytes(out)
    if merge:
        while b"//" in path:
            path = path.replace(b"//", b"/")
    if normalize:
        segs = []
        parts = path.split(b"/")
        for j, seg in enumerate(parts[1:]):
            last = j == len(parts) - 2
            if seg == b".":
                if last:
                    segs.append(b"")
            elif seg == b"..":
                if segs:
                    segs.pop()
                if last:
                    segs.append(b"")
            else:
                segs.append(seg)
        path = b"/" + b"/".join(segs)
    return path


def normalize_request_path(bytes data, Py_ssize_t off, int path_off, int path_len,
                           bint normalize, bint merge):
    """data with the request-target's path canonicalised, or None if unchanged."""
    target = data[off + path_off:off + path_off + path_len]
    q = target.find(b"?")
    path, query = (target, b"") if q < 0 else (target[:q], target[q:])
    new = _canonical_path(path, normalize, merge)
    if new == path:
        return None
    return data[off:off + path_off] + new + query + data[off + path_off + path_len:]


cdef bytes fmt_address(host, port):
    host = host.decode() if isinstance(host, bytes) else str(host)
    if ":" in host:
        host = f"[{host}]"
    return f"{host}:{port}".encode()


cdef bytes strip_port(bytes host):
    cdef Py_ssize_t i
    if host.endswith(b"]"):
        return host
    i = host.rfind(b":")
    return host[:i] if i > 0 else host
