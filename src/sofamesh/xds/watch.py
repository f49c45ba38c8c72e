"""Directory watches (Linux inotify through libc), as Envoy's filesystem watcher has them.

Envoy watches the directory a config file lives in and reloads the file only when a file is
moved onto its name (IN_MOVED_TO: `mv new.yaml lds.yaml`, the atomic replace); a write in
place is not a reload. With `watched_directory`, any move into that directory reloads the
file (Kubernetes swaps a ConfigMap's `..data` symlink that way).
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import os
import struct
from collections.abc import Callable

IN_MOVED_TO = 0x00000080
IN_NONBLOCK = 0o4000
IN_CLOEXEC = 0o2000000
_EVENT = struct.Struct("iIII")  # struct inotify_event: wd, mask, cookie, len (then the name)


class DirWatcher:
    """Calls `callback(name)` for each file moved into a watched directory; `name` is the
    file's name in the directory. One inotify descriptor for every watch."""

    def __init__(self) -> None:
        self._libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fd = self._libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            e = ctypes.get_errno()
            raise OSError(e, f"inotify_init1: {os.strerror(e)}")
        self.fd = fd
        self._watches: dict[int, list[Callable[[str], None]]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    def add(self, directory: str, callback: Callable[[str], None]) -> None:
        wd = self._libc.inotify_add_watch(self.fd, os.fsencode(directory), IN_MOVED_TO)
        if wd < 0:
            e = ctypes.get_errno()
            raise OSError(e, f"unable to add filesystem watch for {directory}: {os.strerror(e)}")
        self._watches.setdefault(wd, []).append(callback)
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
            self._loop.add_reader(self.fd, self._on_readable)

    def _on_readable(self) -> None:
        try:
            data = os.read(self.fd, 65536)
        except BlockingIOError:
            return
        off = 0
        while off + _EVENT.size <= len(data):
            wd, mask, _, n = _EVENT.unpack_from(data, off)
            name = (
                data[off + _EVENT.size : off + _EVENT.size + n]
                .rstrip(b"\0")
                .decode(errors="surrogateescape")
            )
            off += _EVENT.size + n
            if mask & IN_MOVED_TO:
                for cb in list(self._watches.get(wd, ())):
                    cb(name)

    def close(self) -> None:
        if self._loop is not None:
            self._loop.remove_reader(self.fd)
            self._loop = None
        os.close(self.fd)
        self._watches.clear()
