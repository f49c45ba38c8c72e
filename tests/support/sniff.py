"""A packet capture for tests that must show what crosses a link (`ip netns exec NS python -m
tests.support.sniff IFACE OUT`): every frame seen on IFACE is appended to OUT, each after
its length (4 bytes, big-endian), until the process is stopped. Needs CAP_NET_RAW (the
namespace tests run as root). `tcp_payload(OUT, port)`: the bytes TCP carried to or from
`port` (IPv4), in capture order."""

from __future__ import annotations

import socket
import struct
import sys
from pathlib import Path

ETH_P_ALL = 0x0003


def tcp_payload(path: Path, port: int) -> bytes:
    data = path.read_bytes()
    out = []
    i = 0
    while i + 4 <= len(data):
        (n,) = struct.unpack_from("!I", data, i)
        frame = data[i + 4 : i + 4 + n]
        i += 4 + n
        if len(frame) < 34 or frame[12:14] != b"\x08\x00" or frame[23] != 6:
            continue  # not IPv4 TCP
        ip = 14 + (frame[14] & 0x0F) * 4
        sport, dport = struct.unpack_from("!HH", frame, ip)
        if port not in (sport, dport):
            continue
        total = struct.unpack_from("!H", frame, 16)[0]
        tcp = ip + (frame[ip + 12] >> 4) * 4
        out.append(frame[tcp : 14 + total])
    return b"".join(out)


def main() -> None:
    iface, out = sys.argv[1], sys.argv[2]
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    s.bind((iface, 0))
    with open(out, "ab", buffering=0) as f:
        print("ready", flush=True)
        while True:
            frame = s.recv(65536)
            f.write(struct.pack("!I", len(frame)) + frame)


if __name__ == "__main__":
    main()
