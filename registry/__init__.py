"""Registry: all MLflow access (aliases candidate/canary/champion, lineage, materialize)."""
