"""How a canary is stepped up, promoted or rolled back: the rollout's settings (``ROLLOUT_*``).

These belong to the rollout, not to the build: they are read by the controller (and the registry
CLI's ``step``) when it runs, from the environment, so changing them never makes a new model
version, and an image never bakes them in. The defaults below are the one place they are written;
``make canary-eval`` measures what they do (false rollbacks, missed regressions, time to a verdict).

How the controller uses them (serving/rollout/analysis.py): every tick it compares everything the
canary has served since it started with what the champion served over the same time, metric by
metric, with always-valid confidence bounds (so looking every second does not inflate errors):

- **harm** (roll back at once): the canary's error rate is above the champion's, or its p50 or p95
  latency (end to end, time to first token, time per output token) is above ``latency_tolerance``
  times the champion's, or its answers to golden probes are worse, each with confidence ``1 - alpha``;
- **evidence of health** (needed to step): each metric is shown *not worse* than a margin, with
  confidence ``1 - ni_alpha``. "No significant difference" on a few requests is not enough.

Margins widen at low weights, where a bad canary reaches few users: at weight w the margin is the
final one times ``(100 / w) ** margin_widening`` (in log space for latency ratios). A canary is
promoted after the last step only on the final margins.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from core.steps import check_steps


class RolloutPolicy(BaseSettings):
    """Every field can be set as ``ROLLOUT_<FIELD>`` (``ROLLOUT_STEPS=10,50,100``)."""

    model_config = SettingsConfigDict(env_prefix="ROLLOUT_", extra="forbid", frozen=True)

    # Canary share of live traffic, percent, step by step; after the last step the canary is promoted.
    steps: Annotated[list[int], NoDecode] = Field(default_factory=lambda: [5, 25, 50, 100])
    # The canary's latencies in its first seconds are not judged (its errors and answers are): cold
    # caches and lazy imports make a freshly loaded model's first requests slow, which says nothing of
    # the build.
    warmup_s: float = Field(10.0, ge=0)
    # The least time and canary requests at each step before it may step again.
    min_step_s: float = Field(30.0, ge=0)
    min_step_requests: int = Field(20, ge=1)
    # Harm: the chance that an identical canary is rolled back for one metric (errors, or one
    # quantile of one latency) over a whole rollout, however often it is looked at.
    alpha: float = Field(0.001, gt=0, lt=0.5)
    # The same for answers to golden probes (an identical build answers identically: never rolled back).
    quality_alpha: float = Field(0.01, gt=0, lt=0.5)
    # Evidence of health: the chance a canary exactly at a margin is taken as within it.
    ni_alpha: float = Field(0.05, gt=0, lt=0.5)
    # Final margins (at 100%): error rate at most this much above the champion's (absolute)...
    error_margin: float = Field(0.02, gt=0, lt=1)
    # ...p50 of each latency at most this multiple of the champion's, and p95 at most this one (a p95
    # is a noisy statistic: showing it within 20% takes thousands of requests on a heavy tail)...
    latency_margin: float = Field(1.2, gt=1)
    tail_margin: float = Field(1.5, gt=1)
    # ...(a slowdown smaller than this never counts as harm: load and batching move latencies a little)...
    latency_tolerance: float = Field(1.1, ge=1)
    # ...and golden-probe accuracy at most this much below the champion's.
    quality_margin: float = Field(0.03, gt=0, lt=1)
    margin_widening: float = Field(1.0, ge=0, le=2)
    # Golden-set probes: question pairs per second, each asked of both versions (pinned, never
    # counted as traffic). 0 turns quality judging off.
    probe_rps: float = Field(1.0, ge=0)
    # The least samples of a latency histogram the champion needs before that metric is judged.
    min_latency_samples: int = Field(20, ge=1)

    @field_validator("steps", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        if isinstance(value, str):
            text = value.strip().removeprefix("[").removesuffix("]")
            return [int(part) for part in text.split(",") if part.strip()]
        return value

    @field_validator("steps")
    @classmethod
    def _steps(cls, value: list[int]) -> list[int]:
        return check_steps(value)

    @model_validator(mode="after")
    def _tolerance_below_margin(self) -> RolloutPolicy:
        for name in ("latency_margin", "tail_margin"):
            if self.latency_tolerance > getattr(self, name):
                raise ValueError(
                    f"latency_tolerance {self.latency_tolerance} must not exceed {name} {getattr(self, name)}: a "
                    "canary slower than the margin but within the tolerance would be neither harmful nor shown "
                    "healthy, and wait forever"
                )
        return self

    def widening(self, weight: float) -> float:
        """How much wider than the final margins the margins at ``weight`` percent are."""
        return float((100.0 / max(weight, 1e-9)) ** self.margin_widening)
