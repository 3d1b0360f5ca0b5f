import json

import pytest

from pipecat_rxdrain.emulator import SpeechEmulator
from pipecat_rxdrain.google_clients import EMULATOR_ENV
from pipecat_rxdrain.samples import load_sample
from pipecat_rxdrain.testing import fake_service_account_info


@pytest.fixture(autouse=True)
def _every_test_checks_leaks(no_leaks):
    """No STT test may leave a thread or an asyncio task running (tests/conftest.py)."""


@pytest.fixture
def emu(monkeypatch):
    """The emulator scripted with hello_en's two sentences, and emulator mode pointed at it."""
    with SpeechEmulator(script=list(load_sample("hello_en").segments)) as e:
        monkeypatch.setenv(EMULATOR_ENV, e.address)
        yield e


@pytest.fixture(scope="session")
def sa_info() -> dict:
    """A syntactically valid service-account key (never sent anywhere)."""
    return fake_service_account_info("rxdrain-proj")


@pytest.fixture(scope="session")
def sa_json(sa_info) -> str:
    return json.dumps(sa_info)


@pytest.fixture
def no_adc(monkeypatch):
    """Google mode with no credentials: not emulator mode, and Application Default Credentials (stock's and
    ours) never probe the GCE metadata server (no network)."""
    from google.auth.exceptions import DefaultCredentialsError
    from pipecat.services.google import stt as stock_module

    from pipecat_rxdrain.stt import service as our_module

    def no_default(*a, **kw):
        raise DefaultCredentialsError("no ADC in tests")

    monkeypatch.setattr(stock_module, "default", no_default)
    monkeypatch.setattr(our_module, "default", no_default)
    monkeypatch.delenv(EMULATOR_ENV, raising=False)
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
