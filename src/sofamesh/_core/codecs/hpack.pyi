from typing import TypeAlias

OK: int
E_TRUNCATED: int
E_INTEGER: int
E_INDEX: int
E_HUFFMAN: int
E_TABLE_SIZE: int
E_UPDATE_POSITION: int
E_LIMIT: int
E_HEADER_TOO_LARGE: int
E_LIST_TOO_LARGE: int
E_TOO_MANY: int
STATIC_TABLE: tuple[tuple[bytes, bytes], ...]

class HpackError(ValueError):
    code: int
    def __init__(self, code: int) -> None: ...

Header: TypeAlias = tuple[bytes, bytes]

class Decoder:
    max_header_list_size: int
    max_header_size: int
    max_headers: int
    last_list_size: int
    def __init__(
        self,
        max_table_size: int = 4096,
        max_header_list_size: int = 65536,
        max_header_size: int = 65536,
        max_headers: int = 0,
    ) -> None: ...
    def decode(self, data: bytes) -> list[Header]:
        """The header list; HpackError (with .code) when the block is bad or over a limit."""
    def decode_into(self, data: bytes, out: list[Header]) -> int:
        """Appends to out; returns OK or an E_* code (never raises for bad bytes)."""
    @property
    def max_allowed_table_size(self) -> int: ...
    @max_allowed_table_size.setter
    def max_allowed_table_size(self, size: int) -> None: ...
    @property
    def table_size(self) -> int: ...
    @property
    def table_max_size(self) -> int: ...
    @property
    def table(self) -> list[Header]:
        """The dynamic table, newest first (dynamic index 1 first)."""

class Encoder:
    huffman: bool
    never_index: frozenset[bytes]
    no_index: frozenset[bytes]
    def __init__(self, max_table_size: int = 4096, huffman: bool = True) -> None: ...
    def encode_block(self, headers: list[Header]) -> bytes: ...
    def encode(self, headers: list[Header] | list[tuple[str, str]]) -> bytes: ...
    def set_max_table_size(self, size: int) -> None: ...
    @property
    def table_size(self) -> int: ...
    @property
    def table(self) -> list[Header]: ...
