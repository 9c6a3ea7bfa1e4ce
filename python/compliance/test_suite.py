"""SQLAlchemy's dialect compliance suite, whole."""

from sqlalchemy.testing.suite import *  # noqa: F401,F403
