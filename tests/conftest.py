"""Shared pytest fixtures."""

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared benchmark and training data directory (``../shared/data``)."""
    return Path(__file__).parents[2] / "shared" / "data"
