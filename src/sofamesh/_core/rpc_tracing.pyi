from typing import Any

class RpcTracing:
    tracer: Any
    proto: int
    ppm: int
    id128: bool
    shared: bool
    def __init__(
        self,
        tracer: Any,
        proto: int,
        ppm: int,
        id128: bool,
        shared: bool,
        malformed: Any,
        started: Any,
        continued: Any,
    ) -> None: ...

class RpcSpan:
    fmt: int
    sampled: bool
    trace_id: str
    zipkin_trace: str
    rpc_id: str | None
    server_id: str
    server_parent: str | None
    client_rpc_id: str
    client_id: str
    parent_rpc_id: str | None
    shared: bool
    start_us: int
    client_start_us: int
    end_us: int
    service: str | None
    method: str | None
    peer: str | None
    cluster: Any
    host: Any
    status: int
    why: int
    business_error: bool
