REASONS: dict[int, bytes]

def normalize_request_path(data: bytes, off: int, path_off: int, path_len: int,
                           normalize: bool, merge: bool) -> bytes | None: ...
