"""pipecat_rxdrain.twilio.logs: caller text is made safe before it reaches a log line."""

from __future__ import annotations

from pipecat_rxdrain.twilio.logs import ThrottledWarnings, loggable


def test_loggable_escapes_control_characters_and_caps_the_length():
    assert loggable("hello world") == "hello world"
    assert "\n" not in loggable("a\nb") and loggable("a\nb") == "a\\nb"
    assert "\x1b" not in loggable("\x1b[31mred") and loggable("\x1b[31mred").startswith("\\x1b")
    long = loggable("x" * 15_000, 200)
    assert len(long) == 200 and long.endswith("…")
    assert loggable(12) == "12"


def test_throttled_warnings_log_the_first_at_once_and_count_everything():
    t = [0.0]
    w = ThrottledWarnings(interval_s=10, clock=lambda: t[0])
    for _ in range(5):
        w("x", "boom")
    t[0] = 11.0
    w("x", "boom")
    w("y", "other")
    assert w.counts == {"x": 6, "y": 1}
