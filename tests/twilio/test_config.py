"""pipecat_rxdrain.twilio.config: every setting checked at start-up, secrets never shown."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from enum import StrEnum

import pytest

from pipecat_rxdrain.testing import fake_service_account_json
from pipecat_rxdrain.twilio.config import (
    ConfigError,
    ServerConfig,
    check_google_credentials,
    check_settings,
    load_env,
    setting,
)


@dataclass
class _Demo(ServerConfig):
    batch_ms: float = setting("DEMO_BATCH_MS", 60.0, positive=True, max=1000)
    debounce_ms: float = setting("DEMO_DEBOUNCE_MS", 110.0, min=0)
    flag: bool = setting("DEMO_FLAG", False)
    key: str | None = setting("DEMO_KEY", None, kind=str, secret=True)


@pytest.mark.parametrize("raw", ["nan", "NaN", "inf", "-inf", "0", "-1", "1e9", "lots"])
def test_a_positive_bounded_number_rejects_nan_inf_zero_negative_too_big_and_junk(raw):
    with pytest.raises(ConfigError, match="DEMO_BATCH_MS"):
        load_env(_Demo, {"DEMO_BATCH_MS": raw})


def test_overrides_are_checked_like_the_environment():
    for bad in (math.nan, math.inf, 0, -3):
        with pytest.raises(ConfigError, match="DEMO_BATCH_MS"):
            load_env(_Demo, {}, batch_ms=bad)
    with pytest.raises(ConfigError, match="START_TIMEOUT_S"):
        load_env(_Demo, {}, start_timeout_s=math.nan)


@pytest.mark.parametrize("env,name", [
    ({"DEMO_DEBOUNCE_MS": "-5"}, "DEMO_DEBOUNCE_MS"), ({"DEMO_FLAG": "maybe"}, "DEMO_FLAG"),
    ({"BOT_PORT": "70000"}, "BOT_PORT"), ({"BOT_PORT": "-1"}, "BOT_PORT"), ({"LOG_LEVEL": "LOUD"}, "LOG_LEVEL"),
    ({"MEDIA_TOKEN_TTL_S": "0"}, "MEDIA_TOKEN_TTL_S"), ({"MEDIA_IDLE_TIMEOUT_S": "-1"}, "MEDIA_IDLE_TIMEOUT_S"),
    ({"MAX_CALLS": "0"}, "MAX_CALLS"), ({"MAX_CALLS": "2.5"}, "MAX_CALLS"), ({"STATS_TOKEN": "short"}, "STATS_TOKEN"),
    ({"MAX_PENDING_CONNECTIONS": "0"}, "MAX_PENDING_CONNECTIONS"), ({"REQUEST_TIMEOUT_S": "inf"}, "REQUEST_TIMEOUT_S"),
])
def test_each_bad_setting_names_itself(env, name):
    with pytest.raises(ConfigError, match=name):
        load_env(_Demo, env)


def test_good_values_load_zero_where_meaningful_and_secrets_stay_out_of_repr():
    cfg = load_env(_Demo, {"DEMO_DEBOUNCE_MS": "0", "DEMO_FLAG": "yes", "DEMO_KEY": "s3cr3t-value", "LOG_LEVEL": "debug",
                           "TWILIO_AUTH_TOKEN": "tw1l10-t0ken"})
    assert cfg.debounce_ms == 0 and cfg.flag is True and cfg.log_level == "DEBUG"
    assert "s3cr3t-value" not in repr(cfg) and "tw1l10-t0ken" not in repr(cfg)


def _key_json(**over) -> str:
    return fake_service_account_json("p", **over)


def test_the_service_account_key_is_loaded_at_startup_and_never_quoted(tmp_path):
    check = lambda **kw: check_google_credentials(emulator_host=None, credentials_path=None, **kw)  # noqa: E731
    assert check(credentials_json=_key_json()) is None
    bad = _key_json(private_key="-----BEGIN PRIVATE KEY-----\nnot-a-key\n-----END PRIVATE KEY-----\n")
    problem = check(credentials_json=bad)
    assert problem and "GOOGLE_CREDENTIALS_JSON" in problem and "not-a-key" not in problem
    assert "project_id" in check(credentials_json=json.dumps({"type": "service_account"}))
    path = tmp_path / "key.json"
    path.write_text(bad)
    assert "not a usable service-account key" in check_google_credentials(emulator_host=None, credentials_json=None,
                                                                          credentials_path=str(path))
    assert "loopback" in check_google_credentials(emulator_host="10.0.0.5:1", credentials_json=None, credentials_path=None)


class _Colour(StrEnum):
    RED = "red"
    BLUE = "blue"


@dataclass
class _EnumConfig:
    colour: _Colour = setting("COLOUR", _Colour.RED)

    def validate(self) -> None:
        check_settings(self)


def test_an_enum_setting_loads_members_and_refuses_other_values_naming_the_choices():
    assert load_env(_EnumConfig, {}).colour is _Colour.RED
    cfg = load_env(_EnumConfig, {"COLOUR": " blue "})
    assert cfg.colour is _Colour.BLUE  # a member, not the raw string
    assert load_env(_EnumConfig, {}, colour="blue").colour is _Colour.BLUE  # overrides too
    with pytest.raises(ConfigError, match=r"COLOUR must be one of red, blue, got 'green'"):
        load_env(_EnumConfig, {"COLOUR": "green"})
