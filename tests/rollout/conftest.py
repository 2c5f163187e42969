"""The real MLflow the registry tests use, reused here (one server per session)."""

from tests.registry.conftest import actor, make_project, mlflow_server, settings, store

__all__ = ["actor", "make_project", "mlflow_server", "settings", "store"]
