REASONS: dict[int, bytes]
