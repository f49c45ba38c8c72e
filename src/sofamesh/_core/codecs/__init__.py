"""Sans-IO protocol codecs: bytes in, frames out; frames out, bytes in."""
