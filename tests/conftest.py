"""Rules for the whole suite."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True, scope="session")
def _own_data_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Every sipbot the tests start keeps its default data (call records) in the run's tmp dir.

    Without this, a server started with no ``data_dir`` writes ``~/.local/share/sipbot`` of whoever
    runs the tests, and a schema left there by another checkout makes it refuse to start.
    """
    saved = os.environ.get("XDG_DATA_HOME")
    os.environ["XDG_DATA_HOME"] = str(tmp_path_factory.mktemp("xdg-data"))
    yield
    if saved is None:
        os.environ.pop("XDG_DATA_HOME", None)
    else:
        os.environ["XDG_DATA_HOME"] = saved
