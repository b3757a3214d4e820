"""Database: the engine factory, sessions and migrations (no engine at import time)."""
from .session import make_engine, make_session_factory, migrate

__all__ = ["make_engine", "make_session_factory", "migrate"]
