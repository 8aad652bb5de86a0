# Types of the C extension bridge/_lane.c (the publisher's native lane).
from collections.abc import Callable, Sequence

from bridge._window import Window

END: int
GENERAL: int
FULL: int
UNTAKEN: int

class Lane:
    def __init__(
        self,
        parse: Callable[[bytes], object],
        object_type: type,
        window: Window | None,
        topic: str,
        visitor_keyed: bool,
        suite: str | None,
        retriable: tuple[type[BaseException], ...],
    ) -> None: ...
    def run(
        self,
        records: Sequence[bytes],
        start: int,
        produce: Callable[..., object],
        kept: list[tuple[str, bytes, str | None, str | None]],
        headers: list[dict[str, str]],
        stamps: list[object],
        room_records: int,
        room_bytes: int,
        received_ms: str,
        received_at: float,
        report: Callable[[float | None], object],
        /,
    ) -> tuple[int, int, int, int, int]: ...
