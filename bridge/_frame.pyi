# Types of the C extension bridge/_frame.c (framing gunzipped lines).
from collections.abc import Callable

def split(
    piece: bytes, start: int, limit: int, oversized: Callable[[bytes, int], bytes]
) -> tuple[list[bytes], bytes]: ...
