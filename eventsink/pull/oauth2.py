"""Refreshing an expired OAuth2 access token, for sources that read OAuth2 APIs.

::

    class CalendarSource(DataSource):
        def __init__(self, source, options):
            super().__init__(source, options)
            self.oauth2 = OAuth2Tokens(
                "https://auth.example.com/token",
                access_token=self.source["access_token"],
                refresh_token=self.source["refresh_token"],
                client_id=self.source["client_id"],
                client_secret=self.source["client_secret"],
            )

        @refresh_oauth2(on=AccessTokenExpired, callback=save_tokens)
        def read(self, n=None):
            response = self.http.get(URL, headers=self.oauth2.headers())
            if response.status_code == 401:
                raise AccessTokenExpired(response.text)
            ...

On ``AccessTokenExpired`` the decorator posts the refresh token to the token URL
(``grant_type=refresh_token``, RFC 6749 section 6), keeps the new access token (and the new
refresh token when the server rotates it), calls ``callback(source, tokens)`` so the caller can
store them, and calls the method once more. Tokens are :class:`~eventsink.config.Secret`.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any, TypeVar

import httpx

from ..config import Secret, reveal
from ..exceptions import PermanentError, RetryableError

logger = logging.getLogger("eventsink")

F = TypeVar("F", bound=Callable[..., Any])


class AccessTokenExpired(Exception):
    """Raised by a source when the API refuses its access token (typically a 401)."""


def _secret(value: Any) -> Secret | None:
    if value is None or isinstance(value, Secret):
        return value
    return Secret(str(value))


class OAuth2Tokens:
    """An access token, the refresh token that renews it, and where to renew it."""

    def __init__(
        self,
        token_url: str,
        *,
        refresh_token: str | Secret,
        access_token: str | Secret | None = None,
        client_id: str | None = None,
        client_secret: str | Secret | None = None,
        transport: httpx.BaseTransport | None = None,
        timeout: float = 30.0,
    ) -> None:
        self.token_url = token_url
        self.access_token = _secret(access_token)
        self.refresh_token = _secret(refresh_token)
        self.client_id = client_id
        self.client_secret = _secret(client_secret)
        self.expires_in: float | None = None
        self.refreshes = 0
        self._transport = transport
        self._timeout = timeout

    def headers(self) -> dict[str, str]:
        """The ``Authorization`` header for the current access token."""
        token = reveal(self.access_token)
        return {"Authorization": f"Bearer {token}"} if token else {}

    def refresh(self) -> None:
        """Exchange the refresh token for new tokens at ``token_url``.

        Raises :class:`RetryableError` when the server cannot be reached or answers 5xx, and
        :class:`PermanentError` when it refuses the refresh token (a person must log in again).
        """
        form = {"grant_type": "refresh_token", "refresh_token": reveal(self.refresh_token)}
        if self.client_id:
            form["client_id"] = self.client_id
        if self.client_secret:
            form["client_secret"] = reveal(self.client_secret)
        try:
            with httpx.Client(transport=self._transport, timeout=self._timeout) as client:
                response = client.post(self.token_url, data=form)
        except httpx.TransportError as error:
            raise RetryableError(f"token refresh at {self.token_url} failed: {error}") from None
        if response.status_code >= 500:
            raise RetryableError(
                f"token refresh at {self.token_url} answered {response.status_code}",
                status=response.status_code,
            )
        try:
            body = response.json()
        except ValueError:
            body = {}
        if response.status_code != 200 or not body.get("access_token"):
            raise PermanentError(
                f"token refresh at {self.token_url} was refused ({response.status_code}, "
                f"{body.get('error', 'no access_token')}); authorise again",
                status=response.status_code,
            )
        self.access_token = Secret(body["access_token"])
        if body.get("refresh_token"):  # servers that rotate refresh tokens send a new one
            self.refresh_token = Secret(body["refresh_token"])
        self.expires_in = body.get("expires_in")
        self.refreshes += 1
        logger.info("eventsink: OAuth2 access token refreshed at %s", self.token_url)

    def __repr__(self) -> str:
        return f"<OAuth2Tokens {self.token_url} refreshes={self.refreshes}>"


def refresh_oauth2(
    on: type[BaseException] | tuple[type[BaseException], ...] = AccessTokenExpired,
    *,
    tokens: str = "oauth2",
    callback: Callable[[Any, OAuth2Tokens], Any] | None = None,
) -> Callable[[F], F]:
    """Decorate a source method: on ``on``, refresh the tokens in ``self.<tokens>`` and retry.

    The method is retried once; if it fails again the error propagates. ``callback(self,
    tokens)`` runs after each refresh, e.g. to store the new refresh token.
    """

    def decorate(method: F) -> F:
        @functools.wraps(method)
        def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
            try:
                return method(self, *args, **kwargs)
            except on:
                holder: OAuth2Tokens = getattr(self, tokens)
                holder.refresh()
                if callback is not None:
                    callback(self, holder)
            return method(self, *args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate
