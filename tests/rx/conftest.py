import pytest


@pytest.fixture(autouse=True)
def _every_test_checks_leaks(no_leaks):
    """No rx test may leave a thread or an asyncio task running (tests/conftest.py)."""
