"""``make demo``: the whole journey, from `dvc repro` to a promoted canary and a rolled-back one."""
