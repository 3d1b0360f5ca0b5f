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


# --- the public URL the signature is checked against (PUBLIC_HOST, Forwarded, X-Forwarded-*, Host) ---
from pipecat_rxdrain.twilio.security import ForwardedSource, is_host, public_origin  # noqa: E402


def test_public_host_wins_over_every_forwarded_header():
    o = public_origin({"host": "10.0.0.5:8765", "x-forwarded-host": "other.example", "x-forwarded-proto": "http",
                       "forwarded": "proto=http;host=third.example"}, "http", "bot.example.com")
    assert (o.scheme, o.host, o.host_source) == ("https", "bot.example.com", ForwardedSource.PUBLIC_HOST)
    assert o.url("/ws", websocket=True) == "wss://bot.example.com/ws"


def test_x_forwarded_host_and_proto_use_the_client_side_entry_of_a_list():
    o = public_origin({"host": "rxdrain_bots", "x-forwarded-host": " bot.example.com:8443 , inner.proxy",
                       "x-forwarded-proto": "HTTPS, http"}, "http")
    assert (o.scheme, o.host, o.host_source, o.rejected) == ("https", "bot.example.com:8443",
                                                             ForwardedSource.X_FORWARDED, ())
    assert o.url("/twiml", "a=1") == "https://bot.example.com:8443/twiml?a=1"
    assert o.url("/ws", websocket=True) == "wss://bot.example.com:8443/ws"


def test_rfc7239_forwarded_first_element_wins_over_x_forwarded():
    headers = {"host": "rxdrain_bots", "x-forwarded-host": "xf.example", "x-forwarded-proto": "http",
               "forwarded": 'for=203.0.113.9;proto=https;host="bot.example.com", for=10.0.0.1;host=inner'}
    o = public_origin(headers, "http")
    assert (o.scheme, o.host, o.host_source) == ("https", "bot.example.com", ForwardedSource.FORWARDED)
    # an element without host= leaves the host to X-Forwarded-Host (proto still from Forwarded)
    o = public_origin({**headers, "forwarded": "for=203.0.113.9;proto=https"}, "http")
    assert (o.scheme, o.host) == ("https", "xf.example")


def test_without_proxy_headers_it_is_the_request_itself():
    assert public_origin({"host": "127.0.0.1:8765"}, "http").url("/twiml") == "http://127.0.0.1:8765/twiml"
    assert public_origin({"host": "127.0.0.1:8765"}, "ws").url("/ws", websocket=True) == "ws://127.0.0.1:8765/ws"
    assert public_origin({"host": "[::1]:8765"}, "wss").url("/ws", websocket=True) == "wss://[::1]:8765/ws"


@pytest.mark.parametrize("garbage", [
    "evil.example/path", "evil.example?x=1", "a b", "user@evil.example", "evil.example:99999", "evil.example:",
    "-evil.example", "a..b", "x" * 300, "\u00e9vil.example", "evil.example\r\nX-Injected: 1", "[::1", "",
])
def test_a_malformed_forwarded_host_is_ignored_named_and_falls_back_to_host(garbage):
    o = public_origin({"host": "127.0.0.1:8765", "x-forwarded-host": garbage, "x-forwarded-proto": "https"}, "http")
    assert o.host == "127.0.0.1:8765" and o.host_source == ForwardedSource.HOST
    assert o.rejected == (("x-forwarded-host",) if garbage else ())
    o = public_origin({"host": "127.0.0.1:8765", "forwarded": f'host="{garbage}"'}, "http")
    assert o.host == "127.0.0.1:8765"


@pytest.mark.parametrize("forwarded", ['host="unterminated', "host", ";;=", 'proto=https;host=a"b', "proto=https host=x"])
def test_a_malformed_forwarded_header_is_ignored_never_a_crash(forwarded):
    o = public_origin({"host": "127.0.0.1:8765", "forwarded": forwarded}, "http")
    assert (o.scheme, o.host) == ("http", "127.0.0.1:8765")
    assert o.rejected


def test_bad_schemes_and_hosts_everywhere_give_no_url():
    o = public_origin({"host": "bad host", "x-forwarded-proto": "gopher"}, "http")
    assert o.scheme == "http" and o.rejected == ("x-forwarded-proto",)
    assert o.host is None and o.url("/twiml") is None  # the signature check then fails: 403


def test_is_host_accepts_names_addresses_and_ports_only():
    good = ["bot.example.com", "bot.example.com.", "127.0.0.1", "127.0.0.1:443", "[2001:db8::1]:8443", "rxdrain_bots"]
    assert all(is_host(h) for h in good)
    assert not any(is_host(h) for h in ["", "a/b", "a:b", "[zz]", "a:-1", None])
