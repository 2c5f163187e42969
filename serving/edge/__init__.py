"""The nginx edge: one public port in front of the gateway replicas (config renderer and launcher)."""
