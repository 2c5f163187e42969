"""Settings of the gateway (environment prefix ``GATEWAY_``); the registry's come from ``RegistrySettings``.

Safe by default: bound to loopback, remote image URLs refused, the admin API refused without a
token outside dev mode. Triton's address defaults to the launcher's own settings (``TRITON_HOST``,
``TRITON_HTTP_PORT``), so one environment configures both.
"""

from __future__ import annotations

import ipaddress

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from core import ports
from serving.triton.settings import TritonSettings

#: Shortest admin token accepted outside dev mode (a 128-bit random token is 22+ characters).
MIN_TOKEN_LENGTH = 16


def _triton_url() -> str:
    return TritonSettings().http_url


def _is_loopback(host: str) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class GatewaySettings(BaseSettings):
    """Every field can be set as ``GATEWAY_<FIELD>``; lists as JSON (``GATEWAY_IMAGE_URL_HOSTS='["a.example"]'``)."""

    model_config = SettingsConfigDict(env_prefix="GATEWAY_", extra="forbid")

    host: str = ports.LOOPBACK
    # The gateway has no user authentication: the edge (nginx) in front of it is what clients reach.
    allow_non_loopback: bool = False
    port: int = Field(ports.DEFAULT.gateways[0], ge=1, le=65535)
    dev: bool = False
    admin_token: SecretStr | None = None
    triton_url: str = Field(default_factory=_triton_url)
    # Per attempt, canary and champion alike (a canary that times out is retried once on the champion):
    # the longest answer a client waits for. A hanging canary costs its clients up to this much.
    upstream_timeout_s: float = Field(60.0, gt=0)
    upstream_connections: int = Field(64, ge=1)
    registry_poll_s: float = Field(1.0, gt=0)
    triton_poll_s: float = Field(1.0, gt=0)
    max_body_bytes: int = Field(16 * 1024 * 1024, ge=1024)
    # One decoded image; the model's own MAX_IMAGES and MAX_IMAGE_PIXELS (its config.pbtxt) apply too.
    max_image_bytes: int = Field(8 * 1024 * 1024, ge=1024)
    # Hosts whose https image URLs the gateway fetches; empty: data: URIs only (a URL fetch is an SSRF hole).
    image_url_hosts: list[str] = Field(default_factory=list)
    image_fetch_timeout_s: float = Field(5.0, gt=0)
    # Percent of live requests mirrored to the `candidate` version when Triton serves it.
    shadow_percent: float = Field(0.0, ge=0.0, le=100.0)
    shadow_concurrency: int = Field(4, ge=1)
    # The status page's sliding window over this replica's own counters.
    status_window_s: float = Field(60.0, gt=0)
    history_limit: int = Field(20, ge=1, le=500)
    log_level: str = "info"

    @field_validator("image_url_hosts")
    @classmethod
    def _plain_hosts(cls, hosts: list[str]) -> list[str]:
        bad = [host for host in hosts if not host or "/" in host or ":" in host or "@" in host]
        if bad:
            raise ValueError(f"image_url_hosts must be bare host names (no scheme, port or path), got {bad}")
        return [host.lower() for host in hosts]

    @model_validator(mode="after")
    def _safe(self) -> GatewaySettings:
        if not _is_loopback(self.host) and not self.allow_non_loopback:
            raise ValueError(
                f"GATEWAY_HOST={self.host!r} exposes the gateway beyond this machine; keep 127.0.0.1 behind "
                "the edge proxy, or set GATEWAY_ALLOW_NON_LOOPBACK=true on purpose"
            )
        token = self.admin_token.get_secret_value() if self.admin_token is not None else ""
        if not self.dev and len(token) < MIN_TOKEN_LENGTH:
            raise ValueError(
                f"GATEWAY_ADMIN_TOKEN must be set to a secret of at least {MIN_TOKEN_LENGTH} characters "
                "(e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`); the admin API moves "
                "production traffic. For local development only, set GATEWAY_DEV=true instead"
            )
        if self.dev and not token and not _is_loopback(self.host):
            raise ValueError("GATEWAY_DEV=true without GATEWAY_ADMIN_TOKEN leaves the admin API open: loopback only")
        return self

    @property
    def admin_token_bytes(self) -> bytes | None:
        """The token to compare against, or None: the admin API is open (dev mode without a token)."""
        if self.admin_token is None or not self.admin_token.get_secret_value():
            return None
        return self.admin_token.get_secret_value().encode()
