"""What the NATS sink and the ``eventsink consume`` source share: connection options, connecting,
and turning nats-py's exceptions into the delivery errors the pipeline understands.

nats-py is an optional dependency (``pip install 'eventsink[nats]'``); it is imported only when a
connection is made, so configs can be validated and ``eventsink --help`` works without it.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from ..config import Option, reveal
from ..exceptions import ConfigError, DeliveryError, RetryableError, SinkPausedError

logger = logging.getLogger("eventsink")

CONNECTION_OPTIONS: tuple[Option, ...] = (
    Option(
        "servers",
        list,
        ["nats://127.0.0.1:4222"],
        "NATS server URLs (a list, or a comma-separated string); any cluster member will do.",
        nullable=False,
    ),
    Option("user", str, None, "User name, with 'password'."),
    Option("password", str, None, "Password for 'user'.", secret=True),
    Option("token", str, None, "Authentication token (instead of user/password).", secret=True),
    Option("creds", str, None, "Path of a NATS .creds file (JWT + NKey seed)."),
    Option("tls_ca", str, None, "CA certificate file to verify the servers with (enables TLS)."),
    Option("tls_cert", str, None, "Client certificate file for mutual TLS (with 'tls_key')."),
    Option("tls_key", str, None, "Client private key file for mutual TLS (with 'tls_cert')."),
    Option("connect_timeout", float, 5.0, "Seconds to wait for a connection.", minimum=0.1),
    Option(
        "timeout",
        float,
        10.0,
        "Seconds to wait for JetStream's answers (a batch's acks, a fetch) before retrying.",
        minimum=0.1,
    ),
)


def check_connection_config(config: dict[str, Any], prefix: str = "") -> None:
    """Reject impossible combinations of connection options, naming the key."""
    if not config["servers"]:
        raise ConfigError(f"config key '{prefix}servers' must list at least one URL", key="servers")
    if config["password"] is not None and not config["user"]:
        raise ConfigError(
            f"config key '{prefix}password' needs '{prefix}user' as well", key=prefix + "password"
        )
    methods = [
        name for name in ("user", "token", "creds") if config[name] is not None and config[name]
    ]
    if len(methods) > 1:
        raise ConfigError(
            f"config keys {', '.join(repr(prefix + m) for m in methods)}: use one way to "
            "authenticate",
            key=prefix + methods[1],
        )
    if (config["tls_cert"] is None) != (config["tls_key"] is None):
        missing = "tls_key" if config["tls_key"] is None else "tls_cert"
        raise ConfigError(
            f"config key '{prefix}{missing}' is required with mutual TLS (tls_cert and tls_key "
            "go together)",
            key=prefix + missing,
        )
    for name in ("creds", "tls_ca", "tls_cert", "tls_key"):
        path = config[name]
        if path is not None and not Path(path).expanduser().is_file():
            raise ConfigError(
                f"config key '{prefix}{name}': no file at {path!r}", key=prefix + name
            )


def describe_servers(servers: list[str]) -> str:
    """The server URLs without any user:password@ part, for logs and status pages."""
    shown = []
    for url in servers:
        parts = urlsplit(url if "://" in url else f"nats://{url}")
        host = parts.hostname or ""
        if parts.port:
            host = f"{host}:{parts.port}"
        shown.append(urlunsplit((parts.scheme, host, parts.path, "", "")))
    return ",".join(shown)


def _tls_context(config: dict[str, Any]) -> ssl.SSLContext | None:
    if not (config["tls_ca"] or config["tls_cert"]):
        return None
    context = ssl.create_default_context(cafile=config["tls_ca"])
    if config["tls_cert"]:
        context.load_cert_chain(config["tls_cert"], config["tls_key"])
    return context


async def connect(config: dict[str, Any], *, name: str) -> Any:
    """Open one long-lived connection that reconnects forever.

    Reconnecting never gives up because a sink or consumer outlives any outage: while the
    connection is down, publishes and fetches time out and are retried by the caller.
    Raises :class:`RetryableError` when no server answers, :class:`SinkPausedError` when the
    credentials are refused.
    """
    import nats  # optional dependency

    errors: list[Exception] = []

    async def on_error(error: Exception) -> None:
        # nats-py reports every failed (re)connect here; one line each, never the credentials.
        errors.append(error)
        del errors[:-10]  # reconnects go on forever: keep only the recent ones
        logger.warning("eventsink NATS connection %r: %s", name, type(error).__name__)

    kwargs: dict[str, Any] = {
        "servers": config["servers"],
        "name": name,
        "connect_timeout": config["connect_timeout"],
        "allow_reconnect": True,
        # Bounded for the first connect (nats-py loops forever on -1 even then, hiding a
        # refused password); unbounded once connected, below.
        "max_reconnect_attempts": 1,
        "reconnect_time_wait": 0.5,
        "error_cb": on_error,
        "tls": _tls_context(config),
    }
    if config["user"]:
        kwargs["user"] = config["user"]
        kwargs["password"] = reveal(config["password"]) or ""
    if config["token"]:
        kwargs["token"] = reveal(config["token"])
    if config["creds"]:
        kwargs["user_credentials"] = str(Path(config["creds"]).expanduser())
    try:
        nc = await nats.connect(**kwargs)
    except Exception as error:
        # The server may reset the socket right after refusing the credentials: a refusal seen
        # on any attempt decides.
        refused = [e for e in errors if "authorization" in f"{type(e).__name__} {e}".lower()]
        cause = refused[0] if refused else (errors[-1] if errors else error)
        raise classify(cause, f"cannot connect to {describe_servers(config['servers'])}") from None
    nc.options["max_reconnect_attempts"] = -1
    return nc


def classify(error: BaseException, doing: str) -> DeliveryError:
    """The delivery error a nats-py exception stands for (retry, or pause for a person)."""
    import nats.errors
    import nats.js.errors

    if isinstance(error, DeliveryError):
        return error
    text = str(error).lower()
    if isinstance(error, nats.errors.AuthorizationError) or "authorization" in text:
        return SinkPausedError(f"{doing}: the server refused the credentials")
    if isinstance(error, nats.js.errors.NoStreamResponseError | nats.errors.NoRespondersError):
        return RetryableError(f"{doing}: no responders (no JetStream stream takes this subject?)")
    if isinstance(error, asyncio.TimeoutError):
        return RetryableError(f"{doing}: timed out")
    if isinstance(error, nats.js.errors.ServiceUnavailableError):
        return RetryableError(
            f"{doing}: JetStream is not available on the server (is it enabled: "
            "nats-server -js, or a jetstream block in its config?)"
        )
    if isinstance(error, nats.js.errors.APIError):
        return RetryableError(f"{doing}: JetStream error {error.code} {error.description}")
    return RetryableError(f"{doing}: {type(error).__name__}: {error}")
