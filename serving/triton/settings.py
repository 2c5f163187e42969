"""Settings of the local Triton server: ports, model control, wait and stop budgets (env prefix ``TRITON_``)."""

from __future__ import annotations

import ipaddress
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from core import ports


class TritonSettings(BaseSettings):
    """How the launcher runs ``tritonserver``; every field can be set as ``TRITON_<FIELD>``."""

    model_config = SettingsConfigDict(env_prefix="TRITON_", extra="forbid")

    host: str = ports.LOOPBACK
    # Triton has no authentication of its own: the gateway is the only thing that should reach it.
    allow_non_loopback: bool = False
    http_port: int = Field(ports.DEFAULT.triton_http, ge=1, le=65535)
    grpc_port: int = Field(ports.DEFAULT.triton_grpc, ge=1, le=65535)
    metrics_port: int = Field(ports.DEFAULT.triton_metrics, ge=1, le=65535)
    model_control_mode: Literal["explicit", "poll", "none"] = "explicit"
    repository_poll_secs: int = Field(5, gt=0)
    # Refuse configs that Triton would otherwise auto-complete, so config.pbtxt stays the contract.
    strict_model_config: bool = True
    ready_timeout_s: float = Field(180.0, gt=0)
    ready_poll_s: float = Field(0.5, gt=0)
    # Triton's own grace for in-flight requests on SIGTERM; the launcher (or, when the process that
    # started the server dies, its watchdog) kills the whole process group after stop_timeout_s.
    exit_timeout_secs: int = Field(10, ge=0)
    stop_timeout_s: float = Field(30.0, gt=0)
    log_verbose: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _check(self) -> TritonSettings:
        try:
            loopback = self.host == "localhost" or ipaddress.ip_address(self.host).is_loopback
        except ValueError as exc:
            raise ValueError(f"TRITON_HOST={self.host!r} is not an IP address or 'localhost'") from exc
        if not loopback and not self.allow_non_loopback:
            raise ValueError(
                f"TRITON_HOST={self.host!r} exposes an unauthenticated Triton beyond this machine; "
                "keep 127.0.0.1 behind the gateway, or set TRITON_ALLOW_NON_LOOPBACK=true on purpose"
            )
        ports = [self.http_port, self.grpc_port, self.metrics_port]
        if len(set(ports)) != len(ports):
            raise ValueError(f"TRITON_HTTP_PORT, TRITON_GRPC_PORT and TRITON_METRICS_PORT must differ, got {ports}")
        return self

    @property
    def http_url(self) -> str:
        """Where clients reach Triton's HTTP API (a server bound to every address is reached on loopback)."""
        host = ports.LOOPBACK if self.host in ("0.0.0.0", "::") else self.host
        return ports.url(self.http_port, host)
