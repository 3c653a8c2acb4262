"""Shared pytest fixtures."""

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared benchmark and training data directory (``../shared/data``); tests that read it
    are skipped on a checkout without it beside the repository."""
    path = Path(__file__).parents[2] / "shared" / "data"
    if not path.is_dir():
        pytest.skip(f"no shared data directory at {path}")
    return path


def pytest_configure(config):
    # several test modules each start an in-process vLLM engine that lives until the process
    # ends; 1 GiB of KV cache apiece (instead of 2) is plenty for their prompts
    import os

    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
