"""The bridge's exception hierarchy, in one place.

    BridgeError                     base of everything the bridge raises on purpose
    ├── ConfigError                 bad settings; the CLI prints one line each, exit 2
    ├── UpstreamError               Live Stream trouble
    │   ├── FatalUpstreamError      400/405/406/505, persistent 404: a client or config bug,
    │   │                           never retried in a loop (exit 3)
    │   ├── AuthError               the token endpoint refused our credentials (exit 3)
    │   └── UpstreamLost            the connection ended or never opened; the reconnect
    │                               rules decide when to try again (carries status, if any)
    ├── PublishError                Kafka trouble
    │   ├── FencedError             another writer took over, or our election generation is
    │   │                           stale: stop writing at once, go back to standby
    │   └── KafkaSetupError         topic missing and not allowed to create it, auth failure
    │                               at start-up, and the like (exit 2)
    └── ElectionError               the election backend cannot be used (exit 4)

Messages never carry secrets: build them from names and statuses, never from
request bodies, headers or settings values.
"""


class BridgeError(Exception):
    """Base of every exception the bridge raises on purpose."""


class ConfigError(BridgeError):
    """One or more settings are invalid; ``problems`` holds one line each."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


class UpstreamError(BridgeError):
    """Live Stream could not be read."""


class FatalUpstreamError(UpstreamError):
    """A status that retrying cannot fix (400, 405, 406, 505, a persistent 404)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class AuthError(UpstreamError):
    """The token endpoint refused the credentials."""


class UpstreamLost(UpstreamError):
    """The connection ended, failed or was refused with a retriable status."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class PublishError(BridgeError):
    """Kafka could not take the records.

    Raised while publishing a batch, ``resume_at`` is the index of its first record that
    was not taken (those before it were): offer the batch again from there.
    """

    resume_at = 0


class FencedError(PublishError):
    """This writer was deposed: another producer or election generation owns the topic."""


class KafkaSetupError(PublishError):
    """Kafka cannot be used as configured (missing topic, refused credentials, ...)."""


class ElectionError(BridgeError):
    """The election backend cannot be used."""
