"""Settings of the rollout controller (env prefix ``CONTROLLER_``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from core import ports
from serving.triton.settings import TritonSettings


class ControllerSettings(BaseSettings):
    """Where the controller finds the gateways, Triton, its folders and the golden set (the policy: ``ROLLOUT_*``)."""

    model_config = SettingsConfigDict(env_prefix="CONTROLLER_", extra="forbid")

    # Every gateway replica's metrics endpoint (comma-separated in the environment).
    gateways: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: [f"{ports.url(port)}/metrics" for port in ports.DEFAULT.gateways], min_length=1
    )
    # Triton's own settings (TRITON_HOST, TRITON_HTTP_PORT) by default, so one environment configures both.
    triton_http_url: str = Field(default_factory=lambda: TritonSettings().http_url)
    # The Triton model repository the controller keeps equal to champion + canary (Triton runs in
    # explicit model-control mode over it), and where verified registry artifacts are kept.
    triton_repository: Path = Path(".run/triton-repo")
    cache_dir: Path = Path(".run/versions")
    # The golden set the controller probes both versions with (the offline gate's: `dvc repro golden`);
    # without one, answer quality is not judged (the status and the log say so).
    golden_path: Path | None = Path("artifacts/golden")
    # One probe answer may take this long (a probe that fails is asked again; it never counts as wrong).
    probe_timeout_s: float = Field(60.0, gt=0)
    # How often to scrape and check the hard floors; the statistical verdict comes every rollout.interval_s.
    tick_s: float = Field(1.0, gt=0)
    # The controller lease: only its holder acts; it expires this long after its holder stops renewing.
    lease_ttl_s: float = Field(10.0, gt=0)
    # A version that stops being champion or canary is unloaded after this grace (in-flight requests
    # and gateways that have not yet reconciled still reach it meanwhile).
    unload_grace_s: float = Field(10.0, ge=0)
    # How often the controller's status is written to the registry when nothing changed.
    status_every_s: float = Field(5.0, gt=0)

    @field_validator("gateways", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        return [part.strip() for part in value.split(",") if part.strip()] if isinstance(value, str) else value
