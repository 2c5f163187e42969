"""Domain errors of the registry. No HTTP here: the CLI maps them to exit codes and messages."""

from __future__ import annotations


class RegistryError(Exception):
    """Base: the message says what went wrong and what to do about it."""


class ServerError(RegistryError):
    """The MLflow server did not start or never became healthy."""


class NotValidatedError(RegistryError):
    """The version did not pass validation; it must not be registered."""


class UpstreamError(RegistryError):
    """An input of the register stage is missing or malformed."""


class NotFoundError(RegistryError):
    """A registered model, version or alias the action needs does not exist."""


class InvalidTransitionError(RegistryError):
    """The action does not apply to the current rollout state."""


class ConcurrentChangeError(RegistryError):
    """Another action changed the rollout state (or holds the lock) since this one read it."""


class TamperedArtifactError(RegistryError):
    """An artifact's bytes differ from the checksum recorded when it was registered."""
