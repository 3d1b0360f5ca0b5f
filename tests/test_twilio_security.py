"""The bot's doors: per-call media tokens and Twilio webhook signatures."""

from __future__ import annotations

import pytest

from pipecat_rxdrain.clock import FakeClock
from pipecat_rxdrain.twilio.security import MediaTokens, WebhookVerifier

SECRET = "s3cret-media-token-key-0123456789"
AUTH = "twilio-auth-token-abcdef0123456789"
URL = "https://bot.example.test/twiml"
PARAMS = {"CallSid": "CA1", "AccountSid": "AC1", "From": "+15005550001", "To": "+15005550002"}


def test_a_token_is_good_once_for_its_call_only():
    tokens = MediaTokens(SECRET)
    t = tokens.issue("CA1")
    assert tokens.check("CA2", t) == "invalid token"
    assert tokens.check("CA1", t) is None
    assert tokens.check("CA1", t) == "token already used"


@pytest.mark.parametrize("bad", [None, "", "nodot", "abc.def", "123.", "9" * 300 + ".x"])
def test_malformed_tokens_are_refused(bad):
    reason = MediaTokens(SECRET).check("CA1", bad)
    assert reason in ("missing token", "malformed token", "invalid token")


def test_tokens_expire_and_forged_macs_fail():
    clock = FakeClock(1_000_000.0)
    tokens = MediaTokens(SECRET, ttl_s=60, clock=clock)
    t = tokens.issue("CA1")
    expiry, mac = t.split(".")
    assert tokens.check("CA1", f"{int(expiry) + 1000}.{mac}") == "invalid token"  # can't extend the expiry
    assert tokens.check("CA1", f"{expiry}.{mac[:-2]}AA") == "invalid token"
    clock.advance(61)
    assert tokens.check("CA1", t) == "expired token"


def test_tokens_from_another_secret_are_refused_and_shared_secrets_interoperate():
    a, b, a2 = MediaTokens(SECRET), MediaTokens("another-secret-0123456789"), MediaTokens(SECRET)
    assert b.check("CA1", a.issue("CA1")) == "invalid token"
    assert a2.check("CA1", a.issue("CA1")) is None  # processes behind a load balancer share MEDIA_TOKEN_SECRET


def test_weak_secret_and_bad_ttl_are_refused_and_reprs_hide_secrets():
    with pytest.raises(ValueError, match="at least 16 bytes"):
        MediaTokens("short")
    with pytest.raises(ValueError, match="ttl"):
        MediaTokens(SECRET, ttl_s=0)
    assert SECRET not in repr(MediaTokens(SECRET))
    assert AUTH not in repr(WebhookVerifier(AUTH))


def test_webhook_signature_checks():
    v = WebhookVerifier(AUTH)
    good = v.sign(URL, PARAMS)
    assert v.verify(URL, PARAMS, good)
    assert not v.verify(URL, PARAMS, None)  # unsigned
    assert not v.verify(URL, PARAMS, "Zm9yZ2VkIHNpZ25hdHVyZQ==")  # forged
    assert not v.verify("https://evil.example.test/twiml", PARAMS, good)  # replayed against another URL
    assert not v.verify(URL + "?x=1", PARAMS, good)
    assert not v.verify(URL, {**PARAMS, "From": "+19999999999"}, good)  # tampered form
    assert not WebhookVerifier("another-auth-token-0123456789").verify(URL, PARAMS, good)
    with pytest.raises(ValueError):
        WebhookVerifier("")
