"""FakeClock lives in pipecat_rxdrain.testing; the old import paths still give the same class."""

import pipecat_rxdrain
from pipecat_rxdrain import clock, testing


def test_fake_clock_is_importable_from_testing_clock_and_top_level():
    assert clock.FakeClock is testing.FakeClock
    assert pipecat_rxdrain.FakeClock is testing.FakeClock
    fake = testing.FakeClock(1.0)
    assert fake.advance(0.5) == 1.5 and fake() == 1.5
