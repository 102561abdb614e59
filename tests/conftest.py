"""Shared pytest fixtures. Keep each group of fixtures in its own section."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from _support.gerrit import GerritServer
from _support.gerrit_events import EventsSetup, provision_events
from _support.gerrit_provision import GerritFixture, Rest, provision

# --------------------------------------------------------------------------------------------------------
# Real Gerrit (tests marked @pytest.mark.gerrit)
#
# One Gerrit per test session, started only when a test asks for `gerrit` (first start fetches the runtime
# with scripts/fetch_gerrit.sh into ~/.cache/gerrit-authz; later starts take ~10 s). GERRIT_VERSION and
# GERRIT_JAVA_HOME select the release and the JDK; see tests/_support/gerrit.py.
# --------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def gerrit() -> Iterator[GerritFixture]:
    server = GerritServer()
    try:
        server.start()
        yield GerritFixture(server=server, org=provision(server.url, server.admin_auth))
    finally:
        server.close()


# --------------------------------------------------------------------------------------------------------
# The real Gerrit's event stream (gerrit.events): authz-bot with an SSH key, Stream Events and the reads the
# stream is filtered by; see tests/_support/gerrit_events.py.
# --------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def rest(gerrit: GerritFixture) -> Iterator[Rest]:
    """Gerrit's REST API as its administrator, for tests that change Gerrit (groups, ACLs, changes)."""
    client = Rest(gerrit.server.url, gerrit.server.admin_auth)
    yield client
    client.close()


@pytest.fixture(scope="session")
def password_file(gerrit: GerritFixture, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The service account's HTTP password in a file, as ``gerrit.password_file`` reads it."""
    path = tmp_path_factory.mktemp("secret") / "gerrit-password"
    path.write_text(gerrit.org.bot.http_password)
    return path


@pytest.fixture(scope="session")
def gerrit_events(gerrit: GerritFixture, tmp_path_factory: pytest.TempPathFactory) -> EventsSetup:
    return provision_events(gerrit, tmp_path_factory.mktemp("gerrit-events"))
