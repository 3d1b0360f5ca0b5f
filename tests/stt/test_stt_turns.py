"""TurnTimer: debounce, VAD hangover and early final, on a fake clock."""

import pytest

from pipecat_rxdrain.clock import FakeClock
from pipecat_rxdrain.stt.turns import TurnTimer


def texts(emits):
    return [(e.text, e.final, e.early) for e in emits]


def make(**kw):
    clock = FakeClock(100.0)
    return clock, TurnTimer(clock=clock, **kw)


def test_interims_coalesced_to_one_per_window_newest_wins():
    clock, t = make(debounce_ms=110)
    assert texts(t.interim("a")) == [("a", False, False)]  # first goes out at once
    clock.advance(0.03)
    assert t.interim("a b") == []
    clock.advance(0.03)
    assert t.interim("a b c") == []
    assert t.next_deadline() == pytest.approx(100.11)
    clock.advance(0.049)
    assert t.poll() == []
    clock.advance(0.002)
    assert texts(t.poll()) == [("a b c", False, False)]  # newest pending flushed at window end
    assert t.next_deadline() is None
    assert t.counters.interims_coalesced == 1 and t.counters.interims_out == 2


def test_at_most_one_interim_per_window_under_a_flood():
    clock, t = make(debounce_ms=110)
    out_times = []
    for i in range(200):  # an interim every 10 ms for 2 s
        for e in t.interim(f"w{i}") + t.poll():
            out_times.append(clock.now)
        clock.advance(0.01)
    gaps = [b - a for a, b in zip(out_times, out_times[1:])]
    assert min(gaps) >= 0.11 - 1e-9
    assert len(out_times) >= 15


def test_debounce_off_emits_every_interim():
    clock, t = make(debounce_ms=None)
    out = []
    for i in range(5):
        out += t.interim(f"x{i}")
    assert [e.text for e in out] == [f"x{i}" for i in range(5)]


def test_final_supersedes_pending_interim():
    clock, t = make(debounce_ms=110)
    t.interim("hel")
    clock.advance(0.02)
    t.interim("hello")
    assert texts(t.final("Hello.")) == [("Hello.", True, False)]
    clock.advance(1)
    assert t.poll() == []


def test_early_final_after_hangover_plus_timeout():
    clock, t = make(debounce_ms=110, vad_hangover_ms=180, final_timeout_ms=320)
    t.interim("book a table")
    clock.advance(0.2)
    t.interim("book a table for two")  # goes out immediately (window passed)
    t.vad_stopped()
    assert t.next_deadline() == pytest.approx(100.2 + 0.5)
    clock.advance(0.499)
    assert t.poll() == []
    clock.advance(0.002)
    assert texts(t.poll()) == [("book a table for two", True, True)]
    # Google's late final for the same segment is suppressed.
    clock.advance(0.3)
    assert t.final("Book a table for two.") == []
    assert t.counters.late_finals_suppressed == 1 and t.counters.early_finals == 1
    # The next segment works normally.
    t.vad_started()
    t.interim("thanks")
    assert texts(t.final("Thanks.")) == [("Thanks.", True, False)]


def test_google_final_in_time_cancels_early_final():
    clock, t = make()
    t.interim("yes")
    t.vad_stopped()
    clock.advance(0.3)
    assert texts(t.final("Yes.")) == [("Yes.", True, False)]
    clock.advance(1)
    assert t.poll() == [] and t.counters.early_finals == 0


def test_speech_resuming_during_hangover_cancels_early_final():
    clock, t = make()
    t.interim("I want")
    t.vad_stopped()
    clock.advance(0.1)
    t.vad_started()
    clock.advance(1)
    assert t.poll() == []
    assert t.counters.early_finals == 0


def test_no_interim_means_no_early_final():
    clock, t = make()
    t.vad_stopped()
    clock.advance(1)
    assert t.poll() == []


def test_early_final_off():
    clock, t = make(final_timeout_ms=None)
    t.interim("hi")
    t.vad_stopped()
    assert t.next_deadline() is None
    clock.advance(5)
    assert t.poll() == []
    assert texts(t.final("Hi.")) == [("Hi.", True, False)]


def test_hangover_off_uses_timeout_only():
    clock, t = make(vad_hangover_ms=0, final_timeout_ms=320)
    t.interim("hi")
    t.vad_stopped()
    assert t.next_deadline() == pytest.approx(100.32)


def test_interims_of_an_early_finalized_segment_are_held():
    clock, t = make(debounce_ms=None)
    t.interim("hello there")
    t.vad_stopped()
    clock.advance(1)
    assert texts(t.poll()) == [("hello there", True, True)]
    assert t.interim("hello there") == []  # stale interim for the same segment
    assert t.final("Hello there.") == []
    assert texts(t.interim("new words")) == [("new words", False, False)]


def test_late_final_after_new_segment_is_trimmed_to_new_words():
    clock, t = make(debounce_ms=None)
    t.interim("call me")
    t.vad_stopped()
    clock.advance(1)
    assert texts(t.poll()) == [("call me", True, True)]
    t.vad_started()  # the user speaks again before Google's late final
    t.interim("call me tomorrow")
    assert texts(t.final("Call me, tomorrow.")) == [("tomorrow.", True, False)]
    assert t.counters.late_finals_trimmed == 1


def test_late_final_repeating_early_text_after_new_segment_is_suppressed():
    clock, t = make(debounce_ms=None)
    t.interim("call me")
    t.vad_stopped()
    clock.advance(1)
    t.poll()
    t.vad_started()
    assert t.final("Call me.") == []
    assert texts(t.final("Tomorrow.")) == [("Tomorrow.", True, False)]


def test_negative_values_rejected():
    with pytest.raises(ValueError):
        TurnTimer(debounce_ms=-1)
