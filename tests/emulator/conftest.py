import pytest

from pipecat_rxdrain.emulator import EmulatorLimits, SpeechEmulator


@pytest.fixture(autouse=True)
def _every_test_checks_leaks(no_leaks):
    """No emulator test may leave a thread or an asyncio task running (tests/conftest.py)."""


@pytest.fixture
def emu():
    """The scripted emulator on hello_en; a stream may last 30 s, 5 s without audio ends it."""
    e = SpeechEmulator(script="hello_en", limits=EmulatorLimits(max_stream_s=30, inactivity_timeout_s=5)).start()
    yield e
    e.stop()  # and no thread of it is left: the leak check above
