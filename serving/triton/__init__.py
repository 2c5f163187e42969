"""Everything about running Triton: settings, launcher, client, serving repository, packaging."""
