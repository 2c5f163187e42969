"""The rollout controller: judges the canary against the champion on live metrics and moves the rollout."""
