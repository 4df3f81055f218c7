"""The senders: webhook (JSON POST), Slack (incoming webhook), e-mail (SMTP) and log, built from the
routing file's channels with their URLs and credentials taken from the environment.

A sender sends one notification or raises `DeliveryError`, which says whether another attempt can help:
HTTP 4xx other than 408/429 and SMTP 5xx are permanent (the request itself is refused), everything else
(5xx, timeouts, refused or dropped connections, SMTP 4xx) is worth a retry. Error texts never contain the
URL: webhook URLs are secrets (a Slack URL is its own credential).
"""

from __future__ import annotations

import http.client
import logging
import os
import smtplib
import ssl
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

import orjson

from connectors.retry import one_line
from notify.messages import Notification, email_message, notification_text, slack_payload, webhook_payload
from notify.routing import ChannelSpec, Routing
from plantpulse.settings import Settings

_RETRIABLE_HTTP = frozenset({408, 429})
deliveries_log = logging.getLogger("plantpulse.notify.deliveries")


class DeliveryError(Exception):
    """One failed attempt. `permanent`: sending the same again cannot succeed. `retry_after`: seconds the
    receiver asked us to wait (HTTP Retry-After)."""

    def __init__(self, message: str, *, permanent: bool = False, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.permanent = permanent
        self.retry_after = retry_after


class ChannelConfigError(ValueError):
    """A channel some route uses cannot be set up from the environment (unset variable, no SMTP server)."""


class Sender(Protocol):
    name: str
    type: str

    def send(self, notification: Notification) -> None: ...


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    # urllib would follow a 301/302/303 of a POST with a GET *without the body*, and report success for a
    # notification nobody received. A moved webhook is a configuration error: it surfaces as HTTP 3xx.
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def _opener(tls: ssl.SSLContext | None) -> urllib.request.OpenerDirector:
    handlers: list[urllib.request.BaseHandler] = [_NoRedirects()]
    if tls is not None:
        handlers.append(urllib.request.HTTPSHandler(context=tls))
    return urllib.request.build_opener(*handlers)


class HttpSender:
    """POST a JSON body (`webhook`: the record plus `text`; `slack`: `{"text", "blocks"}`) to one URL.

    `tls`: how https URLs are verified (NOTIFY_HTTP_CA_FILE); None means the system CAs."""

    def __init__(self, name: str, kind: str, url: str, timeout_s: float, tls: ssl.SSLContext | None = None) -> None:
        self.name, self.type = name, kind
        self._url = url
        self._timeout_s = timeout_s
        self._opener = _opener(tls)
        self._payload: Callable[[Notification], dict[str, Any]] = slack_payload if kind == "slack" else webhook_payload

    def send(self, notification: Notification) -> None:
        request = urllib.request.Request(
            self._url,
            data=orjson.dumps(self._payload(notification)),
            method="POST",
            headers={
                "Content-Type": "application/json",
                "User-Agent": "plantpulse-notify",
                # Lets a receiver drop the duplicate a crash between send and ledger write can cause.
                "Idempotency-Key": notification.key,
            },
        )
        try:
            with self._opener.open(request, timeout=self._timeout_s) as response:
                response.read()
        except urllib.error.HTTPError as error:
            body = _squash(error.read(300).decode("utf-8", "replace"), 200) if error.fp else ""
            what = f"HTTP {error.code} {error.reason}" + (f": {body}" if body else "")
            permanent = 300 <= error.code < 500 and error.code not in _RETRIABLE_HTTP
            raise DeliveryError(what, permanent=permanent, retry_after=_retry_after(error.headers)) from None
        except urllib.error.URLError as error:  # refused, DNS, TLS: str(error.reason) holds no URL
            if isinstance(error.reason, ssl.SSLCertVerificationError):
                # Permanent, as for SMTP: retrying cannot make an untrusted certificate trusted, and eight
                # attempts with backoff would only hide a misconfiguration for minutes. The dead letter
                # keeps the notification and this text, which says what to change.
                raise DeliveryError(
                    f"TLS certificate not accepted: {_squash(error.reason.verify_message or str(error.reason))} "
                    "(NOTIFY_HTTP_CA_FILE must hold the CA that signed the receiver's certificate)",
                    permanent=True,
                ) from None
            raise DeliveryError(f"connection failed: {_squash(str(error.reason))}") from None
        except (TimeoutError, http.client.HTTPException, OSError) as error:
            # A timeout while reading, or the connection dropped without a response (RemoteDisconnected).
            raise DeliveryError(f"{type(error).__name__}: {one_line(error)}") from None


def _squash(text: str, limit: int = 300) -> str:
    """Server text as one bounded line (bodies and SMTP replies can be long, multi-line HTML)."""
    return one_line(Exception(text), limit) if text.strip() else ""


def _retry_after(headers: Any) -> float | None:  # an email.message.Message of response headers
    value = headers.get("Retry-After") if headers is not None else None
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:  # an HTTP date: rare for webhooks; the backoff applies instead
        return None


@dataclass(frozen=True)
class SmtpConfig:
    host: str
    port: int
    sender: str
    username: str | None
    password: str | None
    starttls: bool
    ca_file: str | None
    timeout_s: float


class EmailSender:
    """One e-mail per notification to the channel's recipients, over SMTP (STARTTLS with a verified
    certificate unless SMTP_STARTTLS=false; AUTH when SMTP_USERNAME is set)."""

    type = "email"

    def __init__(self, spec: ChannelSpec, smtp: SmtpConfig) -> None:
        self.name = spec.name
        self._spec = spec
        self._smtp = smtp
        self._tls = ssl.create_default_context(cafile=smtp.ca_file) if smtp.starttls else None

    def send(self, notification: Notification) -> None:
        smtp, spec = self._smtp, self._spec
        message = email_message(notification, channel=spec.name, sender=smtp.sender, to=spec.to,
                                prefix=spec.subject_prefix)
        try:
            with smtplib.SMTP(smtp.host, smtp.port, timeout=smtp.timeout_s) as client:
                if self._tls is not None:
                    client.starttls(context=self._tls)
                if smtp.username:
                    client.login(smtp.username, smtp.password or "")
                refused = client.send_message(message)
        except smtplib.SMTPRecipientsRefused as error:
            codes = [code for code, _ in error.recipients.values()]
            raise DeliveryError(f"SMTP refused every recipient: {error.recipients}",
                                permanent=all(code >= 500 for code in codes)) from None
        except smtplib.SMTPResponseException as error:  # includes authentication failures (535)
            text = error.smtp_error.decode("utf-8", "replace") if isinstance(error.smtp_error, bytes) else error.smtp_error
            raise DeliveryError(f"SMTP {error.smtp_code}: {_squash(text)}",
                                permanent=500 <= error.smtp_code < 600) from None
        except (smtplib.SMTPNotSupportedError, ssl.SSLCertVerificationError) as error:
            # No STARTTLS/AUTH offered, or a certificate we cannot trust: only a configuration change helps.
            raise DeliveryError(f"{type(error).__name__}: {one_line(error)}", permanent=True) from None
        except (smtplib.SMTPException, OSError) as error:  # connection refused/dropped, timeouts
            raise DeliveryError(f"{type(error).__name__}: {one_line(error)}") from None
        if refused:
            # The others got it; sending again would duplicate theirs. Logged loudly instead.
            deliveries_log.warning("channel %r: %s: SMTP refused some recipients: %s", spec.name, notification.key,
                                   refused)


class LogSender:
    """A log line per notification (logger `plantpulse.notify.deliveries`), e.g. for an audit trail."""

    type = "log"

    def __init__(self, name: str) -> None:
        self.name = name

    def send(self, notification: Notification) -> None:
        deliveries_log.info("channel %r: %s: %s", self.name, notification.key, notification_text(notification))


def build_senders(routing: Routing, settings: Settings, environ: Mapping[str, str] | None = None) -> dict[str, Sender]:
    """A sender for every channel some route uses, resolved from `environ` (default `os.environ`) and the
    SMTP settings; a channel no route uses is not checked.

    :raises ChannelConfigError: naming the channel, the routes that use it and the missing variable.
    """
    env = os.environ if environ is None else environ
    senders: dict[str, Sender] = {}
    http_tls: ssl.SSLContext | None = None  # built once, for the first http(s) channel
    for name, routes in routing.users().items():
        spec = routing.channels[name]
        where = f"routing file {routing.path}, channel {name!r} ({spec.type}, used by route(s) {routes})"
        if spec.type in ("webhook", "slack"):
            if not spec.url_env or not env.get(spec.url_env):
                raise ChannelConfigError(f"{where}: environment variable {spec.url_env} is not set (it holds the URL)")
            url = env[spec.url_env]
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                # The value is not echoed: it may be a credential.
                raise ChannelConfigError(f"{where}: environment variable {spec.url_env} does not hold an http(s) URL")
            if http_tls is None and settings.notify_http_ca_file is not None:
                http_tls = _tls_context("NOTIFY_HTTP_CA_FILE", settings.notify_http_ca_file, where)
            senders[name] = HttpSender(name, spec.type, url, settings.notify_http_timeout_seconds, http_tls)
        elif spec.type == "email":
            senders[name] = EmailSender(spec, _smtp_config(settings, where))
        else:
            senders[name] = LogSender(name)
    return senders


def _tls_context(variable: str, ca_file: Path, where: str) -> ssl.SSLContext:
    """A verifying client context trusting only `ca_file` (certificate and host name checked)."""
    if not ca_file.is_file():
        raise ChannelConfigError(f"{where}: {variable}={ca_file} is not a readable file")
    try:
        return ssl.create_default_context(cafile=str(ca_file))
    except ssl.SSLError as error:
        raise ChannelConfigError(f"{where}: {variable}={ca_file} holds no usable PEM certificate: {error}") from None


def _smtp_config(settings: Settings, where: str) -> SmtpConfig:
    for variable, value in (("SMTP_HOST", settings.smtp_host), ("SMTP_FROM", settings.smtp_from)):
        if not value:
            raise ChannelConfigError(f"{where}: environment variable {variable} is not set")
    if settings.smtp_ca_file is not None and not settings.smtp_ca_file.is_file():
        raise ChannelConfigError(f"{where}: SMTP_CA_FILE={settings.smtp_ca_file} is not a readable file")
    password = settings.smtp_password.get_secret_value() if settings.smtp_password is not None else None
    if password and not settings.smtp_username:
        raise ChannelConfigError(f"{where}: SMTP_PASSWORD is set but SMTP_USERNAME is not")
    return SmtpConfig(
        host=str(settings.smtp_host), port=settings.smtp_port, sender=str(settings.smtp_from),
        username=settings.smtp_username, password=password, starttls=settings.smtp_starttls,
        ca_file=str(settings.smtp_ca_file) if settings.smtp_ca_file is not None else None,
        timeout_s=settings.smtp_timeout_seconds,
    )
