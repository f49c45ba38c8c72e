TRANSITIONS: dict[tuple[int, int], tuple[int, int]]

class Stream:
    stream_id: int
    state: int

def transition_for(state: int, event: int) -> tuple[int, int]:
    """(next state, action) from the stream state table."""
