"""``python -m serving.rollout``: run the rollout controller in the foreground (``make up`` starts one)."""

from __future__ import annotations

import logging
import os
import signal
import sys
from types import FrameType

from pydantic import ValidationError

from core.rollout_policy import RolloutPolicy
from registry.settings import RegistrySettings
from registry.store import Store
from serving.rollout.controller import Controller
from serving.rollout.settings import ControllerSettings


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    try:
        settings = ControllerSettings()
        registry = RegistrySettings()
        policy = RolloutPolicy()
    except ValidationError as exc:
        print(f"serving.rollout: bad settings (CONTROLLER_*, REGISTRY_*, ROLLOUT_*):\n{exc}", file=sys.stderr)
        return 2
    controller = Controller(Store(registry), settings, policy)

    def stop(signum: int, frame: FrameType | None) -> None:
        controller.stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    controller.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
