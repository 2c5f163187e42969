"""Deployment beyond one machine: Kubernetes and KServe manifests rendered from a settings file."""
