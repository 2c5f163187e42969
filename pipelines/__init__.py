"""DVC stages: one module per stage, each a pure function behind a thin ``main()``."""
