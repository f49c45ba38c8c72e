"""A real Dubbo peer for tests: Apache's dubbo-python (PyPI `apache-dubbo`), Triple protocol,
ZooKeeper registry. Run as a separate process (dubbo-python's bootstrap is a process-wide
singleton with its own threads):

    python -m tests.support.dubbo_peer provider <zk-hosts|-> <port> <service>
        serves unary method `greet` (returns b"hello " + request) on 127.0.0.1:<port>,
        registered in ZooKeeper unless <zk-hosts> is "-"; prints "READY"; exits on stdin EOF.
    python -m tests.support.dubbo_peer consumer <zk-hosts> <service> <message>
        finds <service> through ZooKeeper as a Dubbo consumer does, calls `greet`, prints
        "RESULT <repr of the reply>".
    python -m tests.support.dubbo_peer call <host:port> <service> <method> <message>
        a Triple call straight to <host:port> (a proxy's listener): prints "RESULT <repr>"
        or "ERROR <exception type>: <text>".
"""

from __future__ import annotations

import sys


def provider(zk: str, port: int, service: str) -> None:
    import dubbo
    from dubbo.configs import RegistryConfig, ServiceConfig
    from dubbo.proxy.handlers import RpcMethodHandler, RpcServiceHandler

    def greet(message: bytes) -> bytes:
        return b"hello " + message

    handler = RpcServiceHandler(
        service_name=service,
        method_handlers=[RpcMethodHandler.unary(method=greet, method_name="greet")],
    )
    config = ServiceConfig(service_handler=handler, host="127.0.0.1", port=port)
    if zk == "-":
        server = dubbo.Server(config)
    else:
        bootstrap = dubbo.Dubbo(registry_config=RegistryConfig.from_url(f"zookeeper://{zk}"))
        server = bootstrap.create_server(config)
    server.start()
    print("READY", flush=True)
    sys.stdin.read()


def consumer(zk: str, service: str, message: str) -> None:
    import dubbo
    from dubbo.configs import ReferenceConfig, RegistryConfig

    bootstrap = dubbo.Dubbo(registry_config=RegistryConfig.from_url(f"zookeeper://{zk}"))
    client = bootstrap.create_client(ReferenceConfig(protocol="tri", service=service))
    call = client.unary(method_name="greet")
    print(f"RESULT {call(message.encode())!r}", flush=True)


def call(target: str, service: str, method: str, message: str) -> None:
    import dubbo
    from dubbo.configs import ReferenceConfig

    host, port = target.rsplit(":", 1)
    client = dubbo.Client(
        ReferenceConfig(protocol="tri", service=service, host=host, port=int(port))
    )
    try:
        reply = client.unary(method_name=method)(message.encode())
    except Exception as exc:  # noqa: BLE001 (printed for the test to read)
        print(f"ERROR {type(exc).__name__}: {exc}", flush=True)
    else:
        print(f"RESULT {reply!r}", flush=True)


if __name__ == "__main__":
    mode, *args = sys.argv[1:]
    if mode == "provider":
        provider(args[0], int(args[1]), args[2])
    elif mode == "consumer":
        consumer(args[0], args[1], args[2])
    elif mode == "call":
        call(args[0], args[1], args[2], args[3])
    else:
        raise SystemExit(f"unknown mode {mode!r}")
