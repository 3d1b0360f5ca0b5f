"""pipecat_rxdrain.testing, the helpers users' tests get: FakeClock and a fake service-account key."""

import json

import pytest

import pipecat_rxdrain
from pipecat_rxdrain import clock, testing
from pipecat_rxdrain.testing import FakeClock, fake_service_account_info, fake_service_account_json


def test_fake_clock_is_importable_from_testing_clock_and_top_level():
    assert clock.FakeClock is testing.FakeClock
    assert pipecat_rxdrain.FakeClock is testing.FakeClock
    fake = testing.FakeClock(1.0)
    assert fake.advance(0.5) == 1.5 and fake() == 1.5


def test_fake_clock_moves_only_forward():
    clock = FakeClock(5.0)
    assert clock() == clock.now == 5.0
    assert clock.advance(0.25) == 5.25
    assert clock.set(7.0) == 7.0
    with pytest.raises(ValueError):
        clock.advance(-0.1)
    with pytest.raises(ValueError):
        clock.set(6.0)
    assert clock() == 7.0


def test_the_fake_service_account_key_loads_as_google_credentials_offline():
    from google.oauth2 import service_account

    info = fake_service_account_info("proj-x", client_id="42")
    creds = service_account.Credentials.from_service_account_info(info)
    assert creds.project_id == "proj-x" and creds.service_account_email == "bot@proj-x.iam.gserviceaccount.com"
    assert info["client_id"] == "42"
    assert json.loads(fake_service_account_json("proj-x"))["private_key"] == info["private_key"]  # one key a process
