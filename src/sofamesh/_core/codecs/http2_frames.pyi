PREFACE: bytes

class FrameBuffer:
    frames: int
    control_frames: int
    def __len__(self) -> int: ...
