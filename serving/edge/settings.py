"""Settings of the nginx edge (env prefix ``EDGE_``): the public port, the internal one, limits and upstreams."""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from core import ports

_SIZE = re.compile(r"^[1-9][0-9]*[kmKM]?$")
_HOST_PORT = re.compile(r"^[A-Za-z0-9.-]+:[0-9]{1,5}$")


class EdgeSettings(BaseSettings):
    """How nginx fronts the gateways; every field can be set as ``EDGE_<FIELD>``."""

    model_config = SettingsConfigDict(env_prefix="EDGE_", extra="forbid")

    # The public listener: the OpenAI API (/v1/...) and /healthz, nothing else.
    host: str = ports.LOOPBACK
    port: int = Field(ports.DEFAULT.edge, ge=1, le=65535)
    # The internal listener: every path of the gateways (status page, /metrics, /readyz, the admin
    # API). Loopback or a private address only: it must never face the clients the public port serves.
    internal_host: str = ports.LOOPBACK
    internal_port: int = Field(ports.DEFAULT.edge_internal, ge=1, le=65535)
    # The gateway replicas (host:port), comma-separated in the environment.
    upstreams: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: [f"{ports.LOOPBACK}:{port}" for port in ports.DEFAULT.gateways], min_length=1
    )
    # Idle keep-alive connections nginx keeps open to the gateways (per worker).
    upstream_keepalive: int = Field(32, ge=1)
    worker_processes: int = Field(1, ge=1)
    # Request bodies above this are refused with 413 before they reach a gateway (images are base64).
    client_max_body_size: str = "20m"
    # Per client address: sustained requests per second, and the burst allowed above it (else 429).
    rate_per_s: int = Field(200, ge=1)
    burst: int = Field(400, ge=0)
    connect_timeout_s: int = Field(2, ge=1)
    # Long enough for a real model's generation; the gateway times out upstream calls itself first.
    read_timeout_s: int = Field(120, ge=1)
    # How long a replica that failed is skipped before nginx tries it again.
    fail_timeout_s: int = Field(5, ge=1)

    @field_validator("upstreams", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        return [part.strip() for part in value.split(",") if part.strip()] if isinstance(value, str) else value

    @field_validator("upstreams")
    @classmethod
    def _host_ports(cls, value: list[str]) -> list[str]:
        bad = [item for item in value if not _HOST_PORT.match(item)]
        if bad:
            raise ValueError(f"EDGE_UPSTREAMS entries must be host:port, got {bad}")
        return value

    @field_validator("client_max_body_size")
    @classmethod
    def _size(cls, value: str) -> str:
        if not _SIZE.match(value):
            raise ValueError(f"EDGE_CLIENT_MAX_BODY_SIZE must look like 20m, 512k or 1048576, got {value!r}")
        return value

    @model_validator(mode="after")
    def _address(self) -> EdgeSettings:
        for name, host in (("EDGE_HOST", self.host), ("EDGE_INTERNAL_HOST", self.internal_host)):
            if host != "localhost":
                try:
                    ipaddress.ip_address(host)
                except ValueError as exc:
                    raise ValueError(f"{name}={host!r} is not an IP address or 'localhost'") from exc
        if self.internal_host != "localhost":
            address = ipaddress.ip_address(self.internal_host)
            if address.is_unspecified or not (address.is_loopback or address.is_private):
                raise ValueError(
                    f"EDGE_INTERNAL_HOST={self.internal_host!r}: the internal listener serves the admin API and "
                    "the status page, so it binds to loopback or a private address, never to all addresses or "
                    "a public one"
                )
        if self.internal_port == self.port:
            raise ValueError(f"EDGE_INTERNAL_PORT and EDGE_PORT must differ (both {self.port})")
        return self

    @property
    def url(self) -> str:
        """The public entry: the OpenAI API."""
        return ports.url(self.port, ports.LOOPBACK if self.host in ("0.0.0.0", "::") else self.host)

    @property
    def internal_url(self) -> str:
        """The internal entry: status page, metrics, readiness and the admin API."""
        return ports.url(self.internal_port, self.internal_host)

    def body_limit_bytes(self) -> int:
        """``client_max_body_size`` in bytes (the gateway's own limit should not exceed it)."""
        value = self.client_max_body_size.lower()
        scale = {"k": 1024, "m": 1024**2}.get(value[-1], 1)
        return int(value.rstrip("km")) * scale
