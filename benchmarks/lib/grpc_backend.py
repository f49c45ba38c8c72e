"""The gRPC upstream for benchmarks/h2_bench.py: a grpcio (asyncio) server over raw bytes.

    python benchmarks/lib/grpc_backend.py PORT

Service `bench.Echo`: `Echo` returns the request message; `Count` returns how many Echo calls
completed, as ASCII digits (the benchmark checks it against the requests h2load counted, since
h2load sees HTTP statuses, not grpc-status). Prints "ready" once serving.
"""

from __future__ import annotations

import asyncio
import signal
import sys

import grpc

SERVICE = "bench.Echo"


async def serve(port: int) -> None:
    calls = 0

    async def echo(req: bytes, ctx: grpc.aio.ServicerContext) -> bytes:
        nonlocal calls
        calls += 1
        return req

    async def count(req: bytes, ctx: grpc.aio.ServicerContext) -> bytes:
        return str(calls).encode()

    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                SERVICE,
                {
                    "Echo": grpc.unary_unary_rpc_method_handler(echo),
                    "Count": grpc.unary_unary_rpc_method_handler(count),
                },
            ),
        )
    )
    if server.add_insecure_port(f"127.0.0.1:{port}") != port:
        raise SystemExit(f"cannot listen on 127.0.0.1:{port}")
    await server.start()
    print("ready", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(0)


if __name__ == "__main__":
    asyncio.run(serve(int(sys.argv[1])))
