"""The settings as environment variables: reading them (environment, ``.env``, secret
files), turning every problem into one named line, the variables the bridge knows, the
README's table, and the effective settings with every secret masked.

The model itself, and the rule that names a variable (``env_name``), are ``bridge.config``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from dotenv import dotenv_values
from pydantic import ValidationError
from pydantic.fields import FieldInfo
from pydantic_settings import SettingsError

from bridge.config import DELIMITER, ENV_PREFIX, Settings, env_name, sections
from bridge.errors import ConfigError
from bridge.secrets import MASK, Secrets, is_secret_name, secret_values

DEFAULT_SECRETS_DIR = "/etc/livestream-bridge/secrets"


def known_env_names() -> set[str]:
    """Every ``BRIDGE_*`` variable the bridge understands."""
    return {
        env_name(section, field)
        for section, model in sections().items()
        for field in model.model_fields
    }


def secret_env_names() -> set[str]:
    """The variables whose values are secrets (never echoed)."""
    return {
        env_name(section, field)
        for section, model in sections().items()
        for field, info in model.model_fields.items()
        if _is_secret_setting(info)
    }


def _is_secret_setting(info: FieldInfo) -> bool:
    # bridge.secrets' rule for settings: a setting is secret when it is typed SecretStr.
    return "SecretStr" in str(info.annotation)


def env_table() -> Iterator[tuple[str, str, str]]:
    """(variable, default, description) for every setting, in model order."""
    for section, model in sections().items():
        for field, info in model.model_fields.items():
            if info.is_required():
                default = "required"
            elif info.default_factory is not None:
                default = "{}" if "dict" in str(info.annotation) else "(computed)"
            elif info.default is None:
                default = "unset"
            else:
                default = str(info.default)
            yield env_name(section, field), default, info.description or ""


def _problem(error: Mapping[str, Any]) -> str:
    loc = [str(part) for part in error["loc"]]
    message = str(error["msg"]).removeprefix("Value error, ")
    if message.split(":", 1)[0] in {f for m in sections().values() for f in m.model_fields}:
        # A model validator names the field it blames as "field: why".
        field, message = message.split(":", 1)
        loc = [*loc[:1], field.strip()]
        message = message.strip()
    if error["type"] == "missing":
        message = "required but not set"
        if len(loc) == 1:
            # A whole section is absent: name each of its required variables.
            required = [
                env_name(loc[0], f)
                for f, info in sections()[loc[0]].model_fields.items()
                if info.is_required()
            ]
            if required:
                return "; ".join(f"{name}: {message}" for name in required)
            try:  # nothing required as such: the section's own rule says what is missing
                sections()[loc[0]].model_validate({})
            except ValidationError as exc:
                return _problem({**exc.errors(include_input=False)[0], "loc": (loc[0],)})
            return message
    if len(loc) >= 2:
        return f"{env_name(loc[0], loc[1])}: {message}"
    if len(loc) == 1:
        return f"{ENV_PREFIX}{loc[0].upper()}{DELIMITER}*: {message}"
    return message


def load_settings(
    *, env_file: str | Path | None = ".env", secrets_dir: str | Path | None = None
) -> Settings:
    """Read and validate the settings; every problem becomes one line of a ConfigError.

    Sources, strongest first: environment, ``.env`` file, secret files. A secret file is
    named like its variable (``BRIDGE_AUTH__CLIENT_SECRET``) and lives in ``secrets_dir``:
    ``BRIDGE_SECRETS_DIR``, else /etc/livestream-bridge/secrets when it exists.
    """
    dotenv = _dotenv_names(env_file)
    problems = [
        f"{name}: unknown setting (misspelt?)"
        for name in sorted({*os.environ, *dotenv})
        if name.upper().startswith(ENV_PREFIX)
        and name.upper() not in known_env_names()
        and name.upper() != "BRIDGE_SECRETS_DIR"
    ]
    if problems:
        # Validating anyway would add confusing "extra input" lines for the same names.
        raise ConfigError(problems)
    secrets = secrets_dir or os.environ.get("BRIDGE_SECRETS_DIR") or DEFAULT_SECRETS_DIR
    try:
        return Settings(
            _env_file=env_file,
            _secrets_dir=secrets if Path(secrets).is_dir() else None,
        )
    except ValidationError as exc:
        lines = [_problem(e) for e in exc.errors(include_input=False)]
        raise ConfigError([part for line in lines for part in line.split("; ")]) from None
    except SettingsError as exc:
        # Raised for unparsable JSON in a dict-valued variable; the message names the
        # field but may quote the value, so rebuild it from the field name alone.
        raise ConfigError([_settings_error_line(str(exc))]) from None


def _dotenv_names(env_file: str | Path | None) -> set[str]:
    if env_file is None or not Path(env_file).is_file():
        return set()
    return {k for k in dotenv_values(env_file) if k.upper().startswith(ENV_PREFIX)}


def _settings_error_line(message: str) -> str:
    match = re.search(r'field "(\w+)"', message)
    section = match.group(1) if match else "?"
    for name in sorted(known_env_names()):
        body = name.removeprefix(ENV_PREFIX).lower()
        if body.startswith(section + DELIMITER) and "dict" in str(_field_annotation(body)):
            return f"{name}: must be a JSON object of strings"
    return f"{ENV_PREFIX}{section.upper()}{DELIMITER}*: could not be parsed"


def _field_annotation(body: str) -> Any:
    section, field = body.split(DELIMITER, 1)
    return sections()[section].model_fields[field].annotation


def masked(settings: Settings) -> dict[str, Any]:
    """The effective settings as plain data, every secret replaced by ``***``.

    What is secret is decided by ``bridge.secrets`` alone: a secret-named client property
    is masked whole, and a secret value quoted anywhere else (in a URL, say) is cut out.
    """
    secrets = Secrets(secret_values(settings))

    def mask(value: Any, name: str = "") -> Any:
        if isinstance(value, dict):
            return {k: mask(v, k) for k, v in value.items()}
        if isinstance(value, list):
            return [mask(v) for v in value]
        if isinstance(value, str):
            return MASK if name and is_secret_name(name) else secrets.scrub(value)
        return value

    data = settings.model_dump(mode="json")
    out: dict[str, Any] = {}
    for section, fields in data.items():
        model = sections()[section]
        out[section] = {
            # SecretStr fields dump as "**********" already; a plain, settled "***" is clearer.
            field: MASK
            if value is not None and _is_secret_setting(model.model_fields[field])
            else mask(value)
            for field, value in fields.items()
        }
    return out
