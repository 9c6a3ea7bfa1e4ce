"""SQLAlchemy's dialect compliance suite, whole."""

from sqlalchemy.testing.suite import *  # noqa: F401,F403
from sqlalchemy.testing.suite import ServerSideCursorsTest as _ServerSideCursorsTest

import nexusd


class ServerSideCursorsTest(_ServerSideCursorsTest):
    # The suite tells a server-side cursor only of the drivers it knows by
    # name (its own TODO says so); nexusd's is a StreamingCursor, under the
    # asyncio adapter's server-side cursor in the async dialect.
    def _is_server_side(self, cursor):
        return isinstance(cursor, nexusd.StreamingCursor) or bool(
            getattr(cursor, "server_side", False))
