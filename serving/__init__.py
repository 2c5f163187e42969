"""Serving: Triton launcher and client, gateway, rollout controller, nginx renderer."""
