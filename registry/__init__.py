"""Registry: all MLflow access. Aliases candidate/canary/champion, canary weight and pause, the rollout
lock (a lease), the audit trail, lineage tags, and per-version materialization with checksums verified."""
