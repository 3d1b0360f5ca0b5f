"""The bot's doors: per-call media tokens and Twilio webhook signatures."""

from __future__ import annotations

import pytest

from pipecat_rxdrain.testing import FakeClock
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
    assert tokens.check("CA1", t) == "call already streamed"


def test_one_webhook_answer_and_one_stream_per_call_sid():
    """Row 12: a signed webhook replayed 1 s later got a fresh token, and a second stream was accepted."""
    clock = FakeClock(1_000_000.0)
    tokens = MediaTokens(SECRET, ttl_s=60, clock=clock)
    first = tokens.issue("CA1")
    clock.advance(1)
    assert tokens.issue("CA1") is None  # the replay gets no token
    assert tokens.check("CA1", first) is None
    clock.advance(61)  # after the ttl the memory is let go (bounded), and the token has expired anyway
    assert tokens.check("CA1", first) == "expired token"


def test_replay_memory_is_bounded():
    tokens = MediaTokens(SECRET, max_tracked=100)
    for i in range(1000):
        assert tokens.issue(f"CA{i}") is not None
    assert len(tokens._issued) <= 100  # noqa: SLF001


@pytest.mark.parametrize("bad", ["1700000000.\u00e9" + "A" * 42, "\u00b2" * 10 + "." + "A" * 43, "１２３." + "A" * 43,
                                 "1700000000." + "A" * 42 + "\u00e9", "1700000000.\x00" + "A" * 42])
def test_non_ascii_tokens_are_malformed_not_a_crash(bad):
    """Row 9: a non-ASCII MAC raised TypeError (compare_digest), a superscript expiry ValueError (int())."""
    assert MediaTokens(SECRET).check("CA1", bad) == "malformed token"


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
    assert a2.check("CA2", a.issue("CA2")) is None  # processes behind a load balancer share MEDIA_TOKEN_SECRET


def test_weak_secret_and_bad_ttl_are_refused_and_reprs_hide_secrets():
    with pytest.raises(ValueError, match="at least 16 bytes"):
        MediaTokens("short")
    for ttl in (0, -1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="ttl"):
            MediaTokens(SECRET, ttl_s=ttl)
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
