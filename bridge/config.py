"""Settings: one model, read from ``BRIDGE_*`` environment variables, a ``.env`` file and
secret files (Kubernetes Secret mounts), validated before anything connects.

Every field maps to exactly one environment variable, ``BRIDGE_<SECTION>__<FIELD>``
(``env_name``); the README's configuration table is generated from this model and a test
keeps the two in step. Secrets are ``SecretStr`` so they never print. Reading the
environment, naming its problems and the masked view live in ``bridge.configload``.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from typing import Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    NestedSecretsSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

ENV_PREFIX = "BRIDGE_"
DELIMITER = "__"
ADOBE_SCOPE = (
    "openid,AdobeID,read_organizations,"
    "additional_info.projectedProductContext,additional_info.job_function"
)

INSECURE_HTTP_VAR = "BRIDGE_LIVESTREAM__ALLOW_INSECURE_HTTP"


def _is_http_url(url: str) -> bool:
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a port that is no number or out of range
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def is_loopback_url(url: str) -> bool:
    """True when ``url`` names this machine (127.0.0.0/8, ::1 or localhost)."""
    host = (urlsplit(url).hostname or "").rstrip(".")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _Section(BaseModel):
    # Unknown keys inside a section are typos; refuse them rather than ignore them.
    model_config = ConfigDict(extra="forbid", frozen=True)


class LivestreamSettings(_Section):
    """Where and how to read Live Stream."""

    url: str = Field(description="Live Stream endpoint URL from Adobe (required)")
    max_connections: int = Field(
        1,
        ge=1,
        le=8,
        description="maxConnections sent to Adobe: the number of slots, each held by one "
        "replica with its own connection",
    )
    # Adobe's pages spell it both ways; the value is sent as written, never translated.
    reset: Literal["smallest", "largest", "earliest", "latest"] | None = Field(
        None, description="reset query parameter on (re)connect"
    )
    smoothing: bool = Field(False, description="ask Adobe for server-side smoothing")
    smoothing_bucket_size: int | None = Field(
        None, ge=1, le=7200, description="smoothingBucketSize in seconds"
    )
    reconnect_grace_s: float = Field(
        60.0, ge=0, description="never reconnect sooner than this after a drop (KA-16598)"
    )
    backoff_cap_s: float = Field(600.0, gt=0, description="upper bound of the retry backoff")
    stall_timeout_s: float = Field(
        300.0, gt=0, description="close a connection silent for this long"
    )
    connect_timeout_s: float = Field(30.0, gt=0, description="TCP/TLS connect timeout")
    # A redirect re-sends the bearer token, so it may only lead where Adobe serves streams.
    redirect_hosts: str = Field(
        "*.adobe.net",
        pattern=r"^\s*((\*\.)?[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*\s*(,\s*|$))*$",
        description="hosts a redirect may lead to, https only (comma-separated; *.domain: "
        "its subdomains); the URL's own scheme and host are always allowed",
    )
    max_record_bytes: int = Field(
        1_000_000, ge=1024, description="larger records go to the dead-letter topic"
    )
    # What sits here when the process dies is lost unless Live Stream replays it, so the
    # bound is kept small: about 1.4 s of a 10,000 hits/s stream.
    queue_bytes: int = Field(
        4_000_000, ge=65536, description="compressed bytes buffered between reader and Kafka"
    )
    # JSON hits gunzip about ten to one; a stream far beyond that is a gzip bomb or garbage.
    max_compression_ratio: float = Field(
        200.0,
        gt=1,
        description="close a stream that inflates beyond this ratio over 1 MiB (gzip bomb)",
    )

    allow_insecure_http: bool = Field(
        False,
        description="INSECURE: allow http:// to a non-loopback host for this URL and "
        "BRIDGE_AUTH__TOKEN_URL (credentials and tokens then travel in cleartext)",
    )

    @model_validator(mode="after")
    def _check(self) -> LivestreamSettings:
        if not _is_http_url(self.url):
            raise ValueError("url: must be an absolute http(s) URL")
        if self.backoff_cap_s < self.reconnect_grace_s:
            raise ValueError("backoff_cap_s: must not be below reconnect_grace_s")
        return self


class AuthSettings(_Section):
    """Adobe IMS OAuth Server-to-Server credentials, or a static token."""

    token_url: str = Field(
        "https://ims-na1.adobelogin.com/ims/token/v3", description="IMS token endpoint"
    )
    client_id: str | None = Field(None, description="OAuth client id (also sent as x-api-key)")
    client_secret: SecretStr | None = Field(None, description="OAuth client secret")
    scope: str = Field(ADOBE_SCOPE, description="comma-separated OAuth scopes")
    access_token: SecretStr | None = Field(
        None, description="static bearer token instead of OAuth (tests, short runs)"
    )
    refresh_before_s: float = Field(
        3600.0, ge=0, description="fetch a new token this long before expiry"
    )

    @model_validator(mode="after")
    def _check(self) -> AuthSettings:
        if not _is_http_url(self.token_url):
            raise ValueError("token_url: must be an absolute http(s) URL")
        if self.access_token is None and (self.client_id is None or self.client_secret is None):
            raise ValueError(
                "client_secret: OAuth needs client_id and client_secret (or set access_token)"
            )
        return self


class KafkaSettings(_Section):
    """The cluster, the topics and the client properties."""

    bootstrap_servers: str = Field(description="Kafka bootstrap servers (required)")
    topic: str = Field("adobe-livestream", description="topic for hits")
    dlq_topic: str = Field("adobe-livestream-dlq", description="dead-letter topic")
    create_topics: bool = Field(True, description="create missing topics at start-up")
    partitions: int = Field(6, ge=1, description="partitions for created topics")
    replication_factor: int = Field(
        -1, ge=-1, description="replication factor for created topics (-1: broker default)"
    )
    topic_config: dict[str, str] = Field(
        default_factory=dict, description="configs for created topics (JSON object)"
    )
    transactional_id: str = Field(
        "livestream-bridge", description="shared by every replica of one deployment"
    )
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="librdkafka security.protocol"
    )
    sasl_mechanism: str | None = Field(None, description="PLAIN, SCRAM-SHA-256/512, OAUTHBEARER")
    sasl_username: str | None = Field(None, description="SASL user name")
    sasl_password: SecretStr | None = Field(None, description="SASL password")
    ssl_ca_location: str | None = Field(None, description="CA file for TLS")
    properties: dict[str, str] = Field(
        default_factory=dict, description="extra librdkafka properties (JSON object)"
    )

    def client_config(self) -> dict[str, str]:
        """librdkafka properties shared by every client the bridge creates."""
        conf = {"bootstrap.servers": self.bootstrap_servers}
        conf["security.protocol"] = self.security_protocol.lower()
        if self.sasl_mechanism:
            conf["sasl.mechanism"] = self.sasl_mechanism
        if self.sasl_username:
            conf["sasl.username"] = self.sasl_username
        if self.sasl_password is not None:
            conf["sasl.password"] = self.sasl_password.get_secret_value()
        if self.ssl_ca_location:
            conf["ssl.ca.location"] = self.ssl_ca_location
        conf.update(self.properties)
        return conf


class PublishSettings(_Section):
    """How records become Kafka messages."""

    compression: Literal["none", "gzip", "snappy", "lz4", "zstd"] = Field(
        "lz4", description="producer compression.type"
    )
    key: Literal["visitor", "none"] = Field(
        "visitor", description="message key: visIdHigh:visIdLow (else mcVisId) or none"
    )
    require_hit_id: bool = Field(True, description="dead-letter records without a hit id")
    commit_interval_ms: int = Field(100, ge=1, description="commit a transaction this often")
    commit_max_records: int = Field(20000, ge=1, description="or after this many records")
    kafka_outage_s: float = Field(
        60.0, gt=0, description="close upstream when Kafka is unreachable this long"
    )
    shutdown_timeout_s: float = Field(20.0, gt=0, description="graceful shutdown deadline")
    dedupe_window: int = Field(
        6_000_000, ge=0, description="recent hit ids remembered to drop replays (0: off)"
    )
    dedupe_seed: bool = Field(True, description="seed the window from the topic's tail")
    dedupe_seed_s: float = Field(
        300.0,
        gt=0,
        description="seed with the hits committed in the last this many seconds "
        "(Live Stream's resume window plus failover; at most dedupe_window ids)",
    )


class ElectionSettings(_Section):
    """Which replica holds the upstream connection."""

    backend: Literal["kafka", "none", "kubernetes"] = Field(
        "kafka", description="kafka, none (single instance) or kubernetes"
    )
    group_id: str = Field("livestream-bridge-election", description="election consumer group")
    topic: str = Field("livestream-bridge-election", description="one-partition election topic")
    session_timeout_ms: int = Field(10000, ge=1000, description="election session timeout")
    identity: str = Field(
        default_factory=lambda: (
            os.environ.get("POD_NAME") or f"{socket.gethostname()}-{os.getpid()}"
        ),
        description="this replica's name (default: POD_NAME, else host-pid)",
    )
    lease_name: str = Field("livestream-bridge", description="Kubernetes Lease name")
    lease_namespace: str | None = Field(
        None, description="Lease namespace (default: the pod's namespace)"
    )
    lease_duration_s: float = Field(15.0, gt=0, description="Kubernetes lease duration")
    renew_deadline_s: float = Field(10.0, gt=0, description="Kubernetes renew deadline")
    retry_period_s: float = Field(2.0, gt=0, description="Kubernetes retry period")
    kubeconfig: str | None = Field(None, description="kubeconfig path (outside a cluster)")
    state_file: str | None = Field(
        None,
        description="backend none: file (on a volume) that carries the reconnect grace "
        "across restarts; unset, absent or unreadable: wait the full grace at start",
    )

    @model_validator(mode="after")
    def _check(self) -> ElectionSettings:
        if not self.lease_duration_s > self.renew_deadline_s > 1.2 * self.retry_period_s:
            raise ValueError(
                "renew_deadline_s: need lease_duration_s > renew_deadline_s > 1.2 x retry_period_s"
            )
        return self


class HttpSettings(_Section):
    """The health, status and metrics endpoint."""

    host: str = Field("0.0.0.0", description="listen address")  # noqa: S104 - a pod must be probed from outside
    port: int = Field(8080, ge=0, le=65535, description="listen port (0: any free port)")


class LogSettings(_Section):
    """Log output."""

    format: Literal["json", "text"] = Field("json", description="json lines or plain text")
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="log level")

    @field_validator("level", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value


class Settings(BaseSettings):
    """Everything the bridge reads from its environment."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=DELIMITER,
        env_file=".env",
        env_ignore_empty=True,
        secrets_nested_delimiter=DELIMITER,
        extra="forbid",
        frozen=True,
    )

    livestream: LivestreamSettings
    auth: AuthSettings
    kafka: KafkaSettings
    publish: PublishSettings = PublishSettings()
    election: ElectionSettings = Field(default_factory=ElectionSettings)
    http: HttpSettings = HttpSettings()
    log: LogSettings = LogSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Secret files are named like the variables they replace, nested sections included,
        # which the plain secrets source cannot do.
        secrets = NestedSecretsSettingsSource(file_secret_settings)
        return (init_settings, env_settings, dotenv_settings, secrets)

    @model_validator(mode="after")
    def _refuse_cleartext(self) -> Settings:
        # Both URLs carry credentials (bearer token, client secret): plain http is for this
        # machine only, unless the operator opts out by name.
        if self.livestream.allow_insecure_http:
            return self
        refused = [
            f"{name}: http:// to a host other than this machine sends credentials in "
            f"cleartext, use https (or set {INSECURE_HTTP_VAR}=true)"
            for name, url in _credential_urls(self)
            if urlsplit(url).scheme == "http" and not is_loopback_url(url)
        ]
        if refused:
            raise ValueError("; ".join(refused))  # load_settings makes one line of each
        return self

    @model_validator(mode="after")
    def _slots_need_an_election(self) -> Settings:
        # One process holds one slot; with no election nothing would hold the others, and
        # Adobe would keep their share of the hits for connections nobody opens.
        if self.livestream.max_connections > 1 and self.election.backend == "none":
            raise ValueError(
                f"{env_name('livestream', 'max_connections')}: more than 1 needs "
                f"{env_name('election', 'backend')} kafka or kubernetes (backend none holds "
                "a single slot)"
            )
        return self

    def for_slot(self, slot: int) -> Settings:
        """These settings as slot ``slot`` uses them: slot 0 keeps every name as
        configured (so one slot is exactly a deployment without slots, and slot 0 keeps its
        election history when N changes); slot i >= 1 appends ``-i`` to the transactional
        id, the election topic and group, and the Lease name."""
        if slot == 0:
            return self
        e, k = self.election, self.kafka
        election = e.model_copy(
            update={
                "topic": slot_name(e.topic, slot),
                "group_id": slot_name(e.group_id, slot),
                "lease_name": slot_name(e.lease_name, slot),
            }
        )
        kafka = k.model_copy(update={"transactional_id": slot_name(k.transactional_id, slot)})
        return self.model_copy(update={"election": election, "kafka": kafka})


MAX_SLOTS = 8  # Live Stream's own limit on maxConnections


def slot_name(name: str, slot: int) -> str:
    """The name slot ``slot`` uses for a per-slot resource (see ``Settings.for_slot``)."""
    return name if slot == 0 else f"{name}-{slot}"


def _credential_urls(settings: Settings) -> list[tuple[str, str]]:
    return [
        (env_name("livestream", "url"), settings.livestream.url),
        (env_name("auth", "token_url"), settings.auth.token_url),
    ]


def cleartext_urls(settings: Settings) -> list[tuple[str, bool]]:
    """(variable, whether its host is loopback) for each credential-carrying URL using
    plain http; one that is not loopback got through by ``INSECURE_HTTP_VAR``."""
    return [
        (name, is_loopback_url(url))
        for name, url in _credential_urls(settings)
        if urlsplit(url).scheme == "http"
    ]


def sections() -> dict[str, type[BaseModel]]:
    """The sections of ``Settings`` by name, in model order."""
    out: dict[str, type[BaseModel]] = {}
    for name, field in Settings.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, _Section):
            out[name] = annotation
    return out


def env_name(section: str, field: str) -> str:
    """The environment variable that sets ``section.field``."""
    return f"{ENV_PREFIX}{section.upper()}{DELIMITER}{field.upper()}"
