class HeaderMap:
    def __len__(self) -> int: ...
    def items(self) -> list[tuple[bytes, bytes]]: ...
    def get_value(self, name: str | bytes) -> bytes | None: ...
    def remove_name(self, name: str | bytes) -> None: ...
    method_value: bytes
    path_value: bytes
    authority_value: bytes
    status_value: int

class HeaderList(HeaderMap):
    pairs: list[tuple[bytes, bytes]]
    first: int
    method_: bytes | None
    path_: bytes | None
    authority_: bytes | None
    scheme: bytes | None
    status: int
    def __init__(
        self,
        items=(),
        *,
        method: bytes | None = None,
        path: bytes | None = None,
        authority: bytes | None = None,
        scheme: bytes | None = None,
        status: int = 0,
    ) -> None: ...
    @staticmethod
    def adopt(pairs: list[tuple[bytes, bytes]], first: int = 0) -> HeaderList: ...
    def append(self, name: str | bytes, value: str | bytes) -> None: ...
