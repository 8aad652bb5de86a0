# Types of the C extension bridge/_fields.c (the record reader's plain fields).
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")

class Reader(Generic[T]):
    def __init__(self, names: tuple[str, ...], cls: Callable[..., T]) -> None: ...
    def read(self, record: bytes) -> T | None: ...
