"""One YAML file configures a deployment: ``server:`` settings, ``agents:``, ``tools:``,
``trunks:``, ``routes:`` and ``hooks:`` (docs/CONFIG.md describes every key).

:func:`load_config` turns the file into frozen typed objects, or raises one
:class:`~sipbot.errors.ConfigError` whose text is one line ``FILE:LINE: FIELD: message``, with
a suggestion where there is one (``unknown key 'promt'; did you mean 'prompt'?``).
"""

from __future__ import annotations

import ipaddress
import os
import re
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Annotated, Any, Literal, NamedTuple

from pydantic import BaseModel, BeforeValidator, Field, StrictBool, ValidationError
from pydantic_core import PydanticCustomError

from sipbot.dialplan.agent import check_codecs
from sipbot.dialplan.analysis import dialplan_warnings
from sipbot.dialplan.build import build_dialplan
from sipbot.dialplan.fields import did_you_mean
from sipbot.dialplan.model import Dialplan
from sipbot.dialplan.schema import DialplanModel, StrictModel
from sipbot.errors import ConfigError
from sipbot.hook_events import Hook, HookModel, build_hooks
from sipbot.secret import EnvString
from sipbot.yamlsource import Document, Path, format_path, load_yaml

DEFAULT_SOURCE = "sipbot/data/default.yaml"  # how the embedded default is named in messages
TRANSPORTS = ("udp", "tcp", "tls")
PLAIN_TRANSPORTS = ("udp", "tcp")  # what a bare HOST:PORT --listen binds
_HOSTPORT_RE = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[^:\[\]]+)(?::(\d+))?")


class ListenAddress(NamedTuple):
    """Where the SIP endpoint listens: transport (``udp``/``tcp``/``tls``), host (an IP), port."""

    transport: str
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.transport}:{host}:{self.port}"


def _invalid(message: str) -> PydanticCustomError:
    return PydanticCustomError("sipbot", message)


def parse_listen(text: str) -> ListenAddress:
    """``"udp:127.0.0.1:5060"`` / ``"tcp:[::1]:5060"`` / ``"tls:127.0.0.1:5061"`` →
    :class:`ListenAddress`.

    Raises:
        ValueError: (a ``PydanticCustomError``) the text is not ``transport:ip:port``.
    """
    if isinstance(text, ListenAddress | tuple):
        return ListenAddress(*text)
    transport, _, rest = str(text).partition(":")
    match = _HOSTPORT_RE.fullmatch(rest)
    example = "expected transport:host:port such as udp:127.0.0.1:5060"
    if transport.lower() not in TRANSPORTS or not match or match.group(2) is None:
        raise _invalid(f"bad listen address {text!r}: {example}")
    host, port = match.group(1).strip("[]"), int(match.group(2))
    if not _is_ip(host) or port > 65535:
        raise _invalid(f"bad listen address {text!r}: the host must be an IP address")
    return ListenAddress(transport.lower(), host, port)


def parse_listen_option(text: str) -> tuple[ListenAddress, ...]:
    """A ``--listen`` value: ``HOST:PORT`` (UDP and TCP) or ``transport:HOST:PORT``.

    Raises:
        ValueError: neither form.
    """
    if text.split(":", 1)[0].lower() in TRANSPORTS:
        return (parse_listen(text),)
    return tuple(parse_listen(f"{transport}:{text}") for transport in PLAIN_TRANSPORTS)


def parse_public_address(text: Any) -> tuple[str, int | None] | None:
    """``"sip.example.com"`` / ``"203.0.113.5:5060"`` → (host, port or None); never 0.0.0.0."""
    if text is None or isinstance(text, tuple):
        return text
    match = _HOSTPORT_RE.fullmatch(str(text))
    if not match:
        raise _invalid(f"bad public address {text!r}: expected host or host:port")
    host = match.group(1).strip("[]")
    if host in ("0.0.0.0", "::"):
        raise _invalid("public_address must be an address peers can reach, not 0.0.0.0")
    port = int(match.group(2)) if match.group(2) else None
    if port is not None and not 0 < port < 65536:
        raise _invalid(f"bad public address {text!r}: port out of range")
    return host, port


def parse_port_range(text: Any) -> tuple[int, int]:
    """``"20000-29999"`` → (20000, 29999)."""
    if isinstance(text, tuple):
        return text
    match = re.fullmatch(r"\s*(\d+)\s*-\s*(\d+)\s*", str(text))
    if not match:
        raise _invalid(f"bad port range {text!r}: expected MIN-MAX such as 20000-29999")
    low, high = int(match.group(1)), int(match.group(2))
    if not 1024 <= low <= high <= 65535 or high - low < 1:
        raise _invalid(f"bad port range {text!r}: need 1024 <= MIN < MAX <= 65535")
    return low, high


def _ip_or_none(text: Any) -> str | None:
    if text is None or _is_ip(str(text)):
        return None if text is None else str(text)
    raise _invalid(f"bad address {text!r}: expected an IP address")


def _codecs(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise _invalid(f"expected a list of codec names, got {value!r}")
    try:
        return check_codecs(list(value))
    except ConfigError as exc:
        raise _invalid(exc.message) from None


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


class SipTimers(StrictModel):
    """RFC 3261 timer values."""

    t1_ms: Annotated[int, Field(gt=0)] = 500
    t2_ms: Annotated[int, Field(gt=0)] = 4000
    t4_ms: Annotated[int, Field(gt=0)] = 5000


class SipTls(StrictModel):
    """``server.sip.tls``: certificates for SIP over TLS (docs/CONFIG.md).

    ``cert_file``/``key_file`` (PEM) are needed to listen on ``tls:``; ``ca_file`` is the CA
    bundle that outgoing connections trust (default: the system's); ``verify: false`` turns off
    the check of the server's certificate and name on outgoing connections.
    """

    cert_file: str | None = None
    key_file: str | None = None
    ca_file: str | None = None
    verify: bool = True

    def model_post_init(self, context: Any, /) -> None:
        for key in ("cert_file", "key_file", "ca_file"):
            path = getattr(self, key)
            if path is not None and not os.path.isfile(path):
                raise _invalid(f"tls.{key} {path!r}: no such file")
        if self.key_file is not None and self.cert_file is None:
            raise _invalid("tls.key_file needs tls.cert_file")


class SipSettings(StrictModel):
    """``server.sip``: listen addresses, advertised address, User-Agent, timers, TLS."""

    listen: tuple[Annotated[ListenAddress, BeforeValidator(parse_listen)], ...] = (
        ListenAddress("udp", "127.0.0.1", 5060),
        ListenAddress("tcp", "127.0.0.1", 5060),
    )
    public_address: Annotated[
        tuple[str, int | None] | None, BeforeValidator(parse_public_address)
    ] = None
    user_agent: str = "sipbot/0.1"
    timers: SipTimers = Field(default_factory=SipTimers)
    dns_servers: tuple[str, ...] = ()  # trunk name lookups; empty: /etc/resolv.conf
    dns_port: Annotated[int, Field(gt=0, lt=65536)] = 53
    tls: SipTls = Field(default_factory=SipTls)

    def model_post_init(self, context: Any, /) -> None:
        if any(a.transport == "tls" for a in self.listen) and self.tls.cert_file is None:
            raise _invalid("listening on tls: needs tls.cert_file and tls.key_file")


class MediaSettings(StrictModel):
    """``server.media``: RTP address and ports, codec preference, timeouts, pre-buffer."""

    rtp_address: Annotated[str | None, BeforeValidator(_ip_or_none)] = None
    rtp_ports: Annotated[tuple[int, int], BeforeValidator(parse_port_range)] = (20000, 29999)
    codecs: Annotated[tuple[str, ...], BeforeValidator(_codecs)] = ("G722", "PCMU", "PCMA")
    inactivity_timeout_s: Annotated[float, Field(gt=0)] = 30.0
    prebuffer_ms: Annotated[int, Field(ge=0, le=1000)] = 60


class LimitSettings(StrictModel):
    """``server.limits``: admission (503 + Retry-After), the graceful drain, and what one source
    address may take.

    ``per_source_calls`` above ``max_calls`` means ``max_calls`` (one source may then take all).
    ``per_source_rps`` counts every SIP message (requests and responses) from one IP address: the
    check runs before anything is parsed. ``per_source_burst`` is how many may come at once.
    """

    max_calls: Annotated[int, Field(ge=1)] = 500
    per_source_calls: Annotated[int, Field(ge=1)] = 100
    per_source_rps: Annotated[float, Field(gt=0, allow_inf_nan=False)] = 50.0
    per_source_burst: Annotated[int, Field(ge=1)] = 100
    max_loop_lag_ms: Annotated[float, Field(gt=0)] = 200.0  # refuse new calls above this lag
    # SIGTERM with > 0: drain (calls may finish this long); 0: SIGTERM ends every call at once
    drain_timeout_s: Annotated[float, Field(ge=0)] = 0.0
    retry_after_s: Annotated[int, Field(ge=1)] = 5


def parse_http_listen(text: Any) -> tuple[str, int] | None:
    """``"127.0.0.1:8089"`` → (host, port); ``off``/``false``/None → None (no listener)."""
    if text is None or text is False or str(text).lower() in ("off", "false", "no", "none"):
        return None
    if isinstance(text, tuple):
        return text
    match = _HOSTPORT_RE.fullmatch(str(text))
    if not match or match.group(2) is None:
        raise _invalid(f"bad HTTP address {text!r}: expected HOST:PORT such as 127.0.0.1:8089")
    host, port = match.group(1).strip("[]"), int(match.group(2))
    if not _is_ip(host) or port > 65535:
        raise _invalid(f"bad HTTP address {text!r}: the host must be an IP address")
    return host, port


def _http_section(value: Any) -> Any:
    """``http: off`` (YAML reads it as False) is the whole section switched off."""
    if value is False or (isinstance(value, str) and value.lower() == "off"):
        return {"listen": None}
    return value


class HttpSettings(StrictModel):
    """``server.http``: the side listener (metrics, health, status, the live-calls page).

    A listener on an address other than loopback needs ``token`` (a bearer token required for
    everything but ``/healthz``).
    """

    listen: Annotated[tuple[str, int] | None, BeforeValidator(parse_http_listen)] = (
        "127.0.0.1",
        8089,
    )
    token: Any = None  # an EnvString or str (kept: pydantic would make it a plain str)
    max_body_bytes: Annotated[int, Field(ge=0)] = 64 * 1024
    request_timeout_s: Annotated[float, Field(gt=0)] = 10.0

    def model_post_init(self, context: Any, /) -> None:
        if self.token is not None and not isinstance(self.token, str):
            raise _invalid("token must be a string (e.g. ${SIPBOT_HTTP_TOKEN})")
        if self.token is not None and not str.strip(self.token):  # "Bearer " would match it
            raise _invalid("token is empty: set a long random value (e.g. ${SIPBOT_HTTP_TOKEN})")
        if self.listen is not None and self.token is None and not _is_loopback(self.listen[0]):
            raise _invalid(
                f"http.listen {self.listen[0]} is not loopback: set http.token (a bearer token)"
            )


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _records_url(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value)
    scheme = text.split(":", 1)[0].lower() if ":" in text else ""
    if scheme not in ("sqlite", "postgresql", "postgres"):
        raise _invalid(
            "a records URL is sqlite:///PATH or postgresql://USER@HOST:PORT/DB, "
            f"not {text.split('@')[-1]!r}"
        )
    return text


class RecordSettings(StrictModel):
    """``server.records``: where call records go and how long they stay."""

    enabled: bool = True
    url: Annotated[str | None, BeforeValidator(_records_url)] = None  # None: SQLite in data_dir
    keep_days: Annotated[int, Field(ge=0)] = 90  # 0 keeps records forever
    queue_max: Annotated[int, Field(ge=1)] = 10_000
    max_size_mb: Annotated[float | None, Field(gt=0)] = None  # cap of the SQLite file
    truncate_chars: Annotated[int, Field(ge=16)] = 2000
    # keep tool argument and result values in the record (else names only: sipbot.sensitive)
    tool_values: StrictBool = False


def _env_secrets(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _invalid("users is a mapping of user name to ${PASSWORD_VARIABLE}")
    for user, password in value.items():
        if not isinstance(password, EnvString):
            raise _invalid(f"the password of {user!r} must come from the environment: ${{VAR}}")
    return value


class TrustSettings(StrictModel):
    """``server.trust``: who may call (see sipbot/sip/trust.py and docs/CONFIG.md)."""

    unknown_sources: Literal["auto", "allow", "reject", "drop"] = "auto"
    realm: str = "sipbot"
    users: Annotated[dict[str, Any], BeforeValidator(_env_secrets)] = Field(default_factory=dict)
    refused_log_interval_s: Annotated[float, Field(gt=0)] = 10.0


class ServerSettings(StrictModel):
    """The ``server:`` section (every key optional)."""

    sip: SipSettings = Field(default_factory=SipSettings)
    trust: TrustSettings = Field(default_factory=TrustSettings)
    media: MediaSettings = Field(default_factory=MediaSettings)
    limits: LimitSettings = Field(default_factory=LimitSettings)
    http: Annotated[HttpSettings, BeforeValidator(_http_section)] = Field(
        default_factory=HttpSettings
    )
    recordings_dir: str | None = None
    data_dir: str | None = None  # None: $XDG_DATA_HOME/sipbot or ~/.local/share/sipbot
    records: RecordSettings = Field(default_factory=RecordSettings)
    log_level: Annotated[
        Literal["debug", "info", "warning", "error"], BeforeValidator(lambda v: str(v).lower())
    ] = "info"
    # what callers and agents say goes to the call records, and to the INFO log only when true
    log_transcripts: bool = False
    # DTMF digits and tool argument/result values in the log, at DEBUG only (sipbot.sensitive)
    log_sensitive: StrictBool = False


class ConfigModel(DialplanModel):
    """The whole file."""

    server: ServerSettings = Field(default_factory=ServerSettings)
    hooks: list[HookModel] = Field(default_factory=list)  # integrator hooks (docs/HOOKS.md)


@dataclass(frozen=True, slots=True)
class Config:
    """A loaded config file.

    Attributes:
        server: the server settings.
        dialplan: agents and routes.
        source: the file name as shown in messages.
        path: the file's path, or None for the embedded default.
        warnings: one-line warnings (``FILE:LINE: FIELD: warning: ...``).
        hooks: the integrator hooks (``hooks:``), loaded.
    """

    server: ServerSettings
    dialplan: Dialplan
    source: str
    path: str | None = None
    warnings: tuple[str, ...] = ()
    hooks: tuple[Hook, ...] = ()


def default_config_text() -> str:
    """The embedded default config (local provider, echo)."""
    return (resources.files("sipbot") / "data" / "default.yaml").read_text(encoding="utf-8")


def load_config(path: str | None, *, environ: Mapping[str, str] | None = None) -> Config:
    """Load and check a config file; None loads the embedded default.

    Args:
        path: the YAML file.
        environ: where ``${VAR}`` references are looked up (default ``os.environ``).

    Raises:
        ConfigError: the first problem, as one line naming file, line and field.
    """
    if path is None:
        source, text = DEFAULT_SOURCE, default_config_text()
    else:
        source = path
        try:
            with open(path, encoding="utf-8") as file:
                text = file.read()
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise ConfigError(f"cannot read the file: {reason}", file=path) from None
    doc = load_yaml(text, source, environ)
    if not isinstance(doc.data, dict):
        raise ConfigError("the file must be a mapping (server:, agents:, routes:)", file=source)
    # top-level ``x-...`` keys hold YAML anchors for reuse (as in docker-compose files)
    data = {k: v for k, v in doc.data.items() if not k.startswith("x-")}
    try:
        model = ConfigModel.model_validate(data)
    except ValidationError as exc:
        raise _first_error(exc, doc) from None
    search_paths = [os.path.dirname(os.path.abspath(path))] if path else []
    search_paths.append(os.getcwd())
    dialplan = build_dialplan(model, doc, search_paths)
    hooks = build_hooks(model.hooks, doc, search_paths)
    warnings = [_warning(doc, p, m) for p, m in dialplan_warnings(dialplan)]
    warnings += [_warning(doc, p, m) for p, m in _unused_definitions(model)]
    warnings += [_warning(doc, p, m) for p, m in _memory_without_records(model)]
    if not dialplan.routes:
        warnings.append(_warning(doc, (), "no routes: every call is rejected with 404"))
    return Config(model.server, dialplan, source, path, tuple(warnings), hooks)


def config_from_objects(
    dialplan: Dialplan,
    server: Mapping[str, Any] | None = None,
    source: str = "<python>",
    *,
    hooks: Sequence[Hook] = (),
) -> Config:
    """A :class:`Config` for a dialplan built in Python (``sipbot.serve``).

    Args:
        dialplan: the agents and routes.
        server: ``server:`` settings as in the YAML file.
        hooks: the integrator hooks.

    Raises:
        ConfigError: a server setting is invalid (``field`` names it).
    """
    try:
        settings = ServerSettings.model_validate(dict(server or {}))
    except ValidationError as exc:
        error = exc.errors(include_url=False, include_input=False)[0]
        field = "server." + ".".join(str(part) for part in error["loc"])
        raise ConfigError(error["msg"].removeprefix("Value error, "), field=field) from None
    warnings = tuple(
        f"{source}: {path}: warning: {message}" for path, message in dialplan_warnings(dialplan)
    )
    return Config(settings, dialplan, source, None, warnings, tuple(hooks))


def _unused_definitions(model: ConfigModel) -> list[tuple[Path, str]]:
    used_tools = {name for agent in model.agents.values() for name in agent.tools}
    used_trunks = {route.match.trunk for route in model.routes}
    out: list[tuple[Path, str]] = [
        (("tools", n), f"tool {n!r} is not used by any agent")
        for n in model.tools
        if n not in used_tools
    ]
    out += [
        (("trunks", n), f"trunk {n!r} is not used by any route")
        for n, trunk in model.trunks.items()
        if n not in used_trunks and trunk.outbound is None  # an outbound trunk is dialled through
    ]
    return out


def _memory_without_records(model: ConfigModel) -> list[tuple[Path, str]]:
    """Agents with ``memory`` on while there are no call records to remember from."""
    if model.server.records.enabled:
        return []
    return [
        (("agents", name, "memory"), "memory needs server.records: this agent remembers nothing")
        for name, agent in model.agents.items()
        if agent.memory is not None and agent.memory.enabled
    ]


def _warning(doc: Document, path: Path, message: str) -> str:
    return str(doc.error(path, f"warning: {message}"))


def _first_error(exc: ValidationError, doc: Document) -> ConfigError:
    errors = []
    for error in exc.errors(include_url=False, include_input=False):
        loc: Path = tuple(error["loc"])
        kind = error["type"]
        if kind == "extra_forbidden":
            key = str(loc[-1])
            hint = did_you_mean(key, _fields_at(loc[:-1]))
            errors.append(doc.error(loc, f"unknown key {key!r}{hint}"))
        elif kind == "missing":
            errors.append(doc.error(loc[:-1], f"missing key {loc[-1]!r}"))
        else:
            message = error["msg"].removeprefix("Value error, ")
            errors.append(doc.error(loc, message[:1].lower() + message[1:]))
    return min(errors, key=lambda e: e.line or 0)


def _fields_at(loc: Path) -> list[str]:
    """The keys the schema allows at ``loc`` (for "did you mean")."""
    annotation: Any = ConfigModel
    for part in loc:
        annotation = _unwrap(annotation)
        origin = typing.get_origin(annotation)
        if origin is dict:
            annotation = typing.get_args(annotation)[1]
        elif origin in (list, tuple):
            annotation = typing.get_args(annotation)[0]
        elif isinstance(annotation, type) and issubclass(annotation, BaseModel):
            field = annotation.model_fields.get(str(part))
            annotation = field.annotation if field else None
        else:
            return []
    annotation = _unwrap(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return list(annotation.model_fields)
    return []


def _unwrap(annotation: Any) -> Any:
    """``X | None`` → X; ``Annotated[X, ...]`` → X."""
    if typing.get_origin(annotation) is Annotated:
        annotation = typing.get_args(annotation)[0]
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return args[0] if len(args) == 1 else annotation
    return annotation


__all__ = [
    "Config",
    "ConfigModel",
    "HttpSettings",
    "LimitSettings",
    "ListenAddress",
    "MediaSettings",
    "RecordSettings",
    "ServerSettings",
    "SipSettings",
    "SipTimers",
    "SipTls",
    "format_path",
    "load_config",
    "parse_http_listen",
    "parse_listen",
    "parse_listen_option",
]
