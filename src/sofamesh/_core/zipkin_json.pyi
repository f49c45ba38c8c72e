from typing import Any

BUILTIN_TAGS: frozenset[str]

class ZipkinSpanWriter:
    usable: bool
    def __init__(
        self,
        local_ip: str,
        node_id: str,
        zone: str,
        max_path: int,
        tags: list[tuple[str, str | None, str]],
    ) -> None: ...
    def server_span(self, s: Any, t: Any, status: int, client: bool) -> bytes | None: ...
