"""A DNS server for tests (UDP, 127.0.0.1, port 0): A records from a dict the test
changes as it goes (name -> (address, ttl)); every query is counted by name. What it does
not know it answers NXDOMAIN; AAAA and other types get an empty answer."""

from __future__ import annotations

import socket
import struct
import threading
from collections import Counter


class DnsServer:
    def __init__(self, records: dict[str, tuple[str, int]]) -> None:
        self.records = dict(records)
        self.queries: Counter[tuple[str, int]] = Counter()  # (name, qtype) -> count
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self._t = threading.Thread(target=self._serve, daemon=True)
        self._lock = threading.Lock()

    def start(self) -> DnsServer:
        self._t.start()
        return self

    def stop(self) -> None:
        self.sock.close()

    def count(self, name: str, qtype: int = 1) -> int:
        with self._lock:
            return self.queries[(name, qtype)]

    def set(self, name: str, address: str, ttl: int) -> None:
        with self._lock:
            self.records[name] = (address, ttl)

    def _serve(self) -> None:
        while True:
            try:
                data, peer = self.sock.recvfrom(4096)
            except OSError:
                return
            try:
                reply = self._answer(data)
            except (struct.error, IndexError, UnicodeDecodeError):
                continue
            try:
                self.sock.sendto(reply, peer)
            except OSError:
                return

    def _answer(self, q: bytes) -> bytes:
        qid, flags = struct.unpack(">HH", q[:4])
        i, labels = 12, []
        while q[i]:
            labels.append(q[i + 1 : i + 1 + q[i]].decode().lower())
            i += 1 + q[i]
        qtype = struct.unpack(">H", q[i + 1 : i + 3])[0]
        question = q[12 : i + 5]
        name = ".".join(labels)
        with self._lock:
            self.queries[(name, qtype)] += 1
            rec = self.records.get(name)
        rd = flags & 0x0100
        if rec is None:
            return struct.pack(">HHHHHH", qid, 0x8083 | rd, 1, 0, 0, 0) + question
        if qtype != 1:
            return struct.pack(">HHHHHH", qid, 0x8080 | rd, 1, 0, 0, 0) + question
        addr, ttl = rec
        answer = struct.pack(">HHHIH", 0xC00C, 1, 1, ttl, 4) + socket.inet_aton(addr)
        return struct.pack(">HHHHHH", qid, 0x8080 | rd, 1, 1, 0, 0) + question + answer
