"""What counts as a secret, decided in one place, and the values that must never leave.

Two questions, two answers:

- *Is this name a secret?* ``is_secret_name``: any librdkafka property whose name holds
  ``password``, ``secret``, ``key``, ``token``, ``credential`` or ``oauthbearer.config``;
  a setting is one when it is typed ``SecretStr``. ``secret_values`` applies exactly
  that, and check-config, the log redactor and ``/status`` all go through it, so a
  property that holds a credential under a new name is caught by all three or by none.
- *Which values are secret right now?* ``Secrets``: the secret values of the settings
  plus every token fetched at run time, which registers itself when it arrives. The one
  instance of a process is made by the CLI and handed to whatever logs or reports text.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable

from pydantic import BaseModel, SecretStr

__all__ = ["MIN_SECRET_LENGTH", "Secrets", "is_secret_name", "secret_values"]

_SECRET_WORDS = ("password", "secret", "key", "token", "credential", "oauthbearer.config")
# Shorter values are not scrubbed: replacing every "abc" in a log line would destroy it
# and protect nothing (no real credential is that short).
MIN_SECRET_LENGTH = 4
MASK = "***"


def is_secret_name(name: str) -> bool:
    """True when a setting or client property called ``name`` holds a secret."""
    lowered = name.lower()
    return any(word in lowered for word in _SECRET_WORDS)


def secret_values(settings: BaseModel) -> list[str]:
    """Every secret value held by ``settings`` (the whole Settings, or one section).

    Secrets are the values of ``SecretStr`` settings and, in a mapping of client properties
    (``BRIDGE_KAFKA__PROPERTIES``), the value of every property ``is_secret_name`` names.
    """
    out: list[str] = []
    for name in type(settings).model_fields:
        value = getattr(settings, name)
        if isinstance(value, SecretStr):
            out.append(value.get_secret_value())
        elif isinstance(value, BaseModel):
            out += secret_values(value)
        elif isinstance(value, dict):
            out += [str(v) for k, v in value.items() if is_secret_name(str(k))]
    return out


class Secrets:
    """The secret values of one process; ``scrub`` removes them from any text.

    Safe from any thread: ``add`` swaps in a new tuple, readers take whichever tuple is
    current, so a log line written while a token arrives is scrubbed of all the others.
    """

    def __init__(self, values: Iterable[str | None] = ()) -> None:
        self._lock = threading.Lock()
        self._values: tuple[str, ...] = ()
        # What is searched for: each value as is and as it reads inside a JSON string, so
        # a multi-line key or a value with quotes is found in a JSON log line or answer too.
        self._forms: tuple[str, ...] = ()
        for value in values:
            self.add(value)

    def add(self, value: str | None) -> None:
        """Remember ``value`` (a token just fetched, say) as a secret from now on."""
        if not value or len(value) < MIN_SECRET_LENGTH:
            return
        with self._lock:
            if value in self._values:
                return
            self._values = (*self._values, value)
            forms = {*self._forms, value, json.dumps(value)[1:-1]}
            # Longest first, so a secret that contains another is replaced whole.
            self._forms = tuple(sorted(forms, key=len, reverse=True))

    def found_in(self, text: str) -> bool:
        """True when ``text`` holds any secret value."""
        return any(form in text for form in self._forms)

    def scrub(self, text: str) -> str:
        """``text`` with every secret value replaced by ``***``."""
        for form in self._forms:
            if form in text:
                text = text.replace(form, MASK)
        return text

    def __contains__(self, value: object) -> bool:
        return value in self._values

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"Secrets({len(self._values)} values)"
