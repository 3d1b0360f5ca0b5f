"""TurnTimer: debounce, VAD hangover and early final, on a fake clock."""

import pytest

from pipecat_rxdrain.stt.turns import TurnTimer
from pipecat_rxdrain.testing import FakeClock


def texts(emits):
    return [(e.text, e.final, e.early) for e in emits]


def make(**kw):
    clock = FakeClock(100.0)
    return clock, TurnTimer(clock=clock, **kw)


def early_finalized(interim: str):
    """A TurnTimer that heard ``interim`` then the end of speech, and 1 s later shipped it as an early final."""
    clock, t = make(debounce_ms=None)
    t.interim(interim)
    t.vad_stopped()
    clock.advance(1)
    t.poll()
    return clock, t


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
    # Google's late final for the same segment repeats it: suppressed.
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
    assert t.counters.catch_up_finals == 1


def test_late_final_repeating_early_text_after_new_segment_is_suppressed():
    clock, t = early_finalized("call me")
    t.vad_started()
    assert t.final("Call me.") == []
    assert texts(t.final("Tomorrow.")) == [("Tomorrow.", True, False)]


def test_negative_values_rejected():
    with pytest.raises(ValueError):
        TurnTimer(debounce_ms=-1)


# --------------------------------------------------------------- never lose words
def test_late_final_delivers_the_words_the_early_final_missed():
    # The issue-14 case: the early final ships a stale interim, Google's full final comes later.
    clock, t = make(debounce_ms=None)
    t.interim("I am calling about my order")
    t.vad_stopped()
    clock.advance(0.5)
    assert texts(t.poll()) == [("I am calling about my order", True, True)]
    clock.advance(0.4)
    emits = t.final("I am calling about my order number four two seven.")
    assert [(e.text, e.final, e.catch_up) for e in emits] == [("number four two seven.", True, True)]
    assert t.counters.catch_up_finals == 1 and t.counters.late_finals_suppressed == 0


def test_catch_up_after_google_revised_the_interim():
    # The early text is not a prefix of the real final: "to" became "two", "for" was added.
    clock, t = early_finalized("book a table to")
    assert texts(t.final("Book a table for two people.")) == [("for two people.", True, False)]


def test_catch_up_after_a_revised_first_word():
    clock, t = early_finalized("hullo I would like")
    assert [e.text for e in t.final("Hello, I would like to book.")] == ["to book."]


def test_unrelated_late_final_is_delivered_whole_never_trimmed():
    # Alignment on a stray common word must not eat words: deliver whole when it does not anchor.
    clock, t = early_finalized("yes")
    t.vad_started()
    assert [e.text for e in t.final("Can you say yes please")] == ["Can you say yes please"]


def test_google_splitting_the_segment_in_two_finals():
    clock, t = early_finalized("book a table for two")
    assert t.final("Book a table") == []
    assert [e.text for e in t.final("for two please.")] == ["please."]
    assert [e.text for e in t.final("Thanks.")] == ["Thanks."]


def test_stale_interim_holds_the_early_final_until_googles_final():
    # Speech ended at audio 3000 ms; the newest interim (Google answering late) only heard up to 2200 ms.
    clock, t = make(debounce_ms=None, coverage_ms=200)
    t.interim("I am calling about", end_ms=2200)
    t.vad_stopped(speech_end_ms=3000)
    clock.advance(0.6)
    assert t.poll() == [] and t.counters.early_finals_held == 1
    assert t.next_deadline() is None
    clock.advance(0.5)
    assert texts(t.final("I am calling about my order.")) == [("I am calling about my order.", True, False)]
    assert t.counters.early_finals == 0


def test_held_early_final_fires_once_an_interim_hears_the_end_of_speech():
    clock, t = make(debounce_ms=None, coverage_ms=200)
    t.interim("I am calling about", end_ms=2200)
    t.vad_stopped(speech_end_ms=3000)
    clock.advance(0.6)
    assert t.poll() == []
    clock.advance(0.1)
    # The late interim that reaches the end of speech becomes the early final at once (no extra interim).
    assert texts(t.interim("I am calling about my order", end_ms=2900)) == [("I am calling about my order", True, True)]
    assert t.final("I am calling about my order.") == []


def test_covering_interim_fires_on_time():
    clock, t = make(debounce_ms=None, coverage_ms=200)
    t.interim("I am calling about my order", end_ms=2850)
    t.vad_stopped(speech_end_ms=3000)
    clock.advance(0.5)
    assert texts(t.poll()) == [("I am calling about my order", True, True)]


def test_an_unstable_interim_is_never_shipped_as_an_early_final():
    # Google marks a tail it may still revise with a low stability ("nine pleas" before "nine please").
    clock, t = make(debounce_ms=None, coverage_ms=200)
    t.interim("tomorrow morning at nine pleas", end_ms=2950, stability=0.1)
    t.vad_stopped(speech_end_ms=3000)
    clock.advance(1)
    assert t.poll() == [] and t.counters.early_finals_held == 1
    # A settled interim opens the gate at once; Google's final then adds nothing.
    assert texts(t.interim("tomorrow morning at nine please", end_ms=2950, stability=0.9)) == [
        ("tomorrow morning at nine please", True, True)
    ]
    assert t.final("Tomorrow morning at nine, please.") == []


@pytest.mark.parametrize("knob", ["debounce_ms", "vad_hangover_ms", "final_timeout_ms", "coverage_ms"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -5, "320"])
def test_turn_timing_knobs_refuse_nan_inf_negative_and_non_numbers(knob, bad):
    with pytest.raises(ValueError, match="turn timing"):
        TurnTimer(**{knob: bad})


def test_min_stability_is_validated():
    with pytest.raises(ValueError, match="min_stability"):
        TurnTimer(min_stability=1.5)


def test_interim_without_position_never_passes_a_positioned_gate():
    clock, t = make(debounce_ms=None)
    t.interim("hello")
    t.vad_stopped(speech_end_ms=1000)
    clock.advance(1)
    assert t.poll() == [] and t.counters.early_finals_held == 1


def test_speech_resuming_clears_a_held_early_final():
    clock, t = make(debounce_ms=None, coverage_ms=0)
    t.interim("I want", end_ms=500)
    t.vad_stopped(speech_end_ms=1000)
    clock.advance(1)
    t.poll()
    t.vad_started()
    # Speech resumed: the covering interim is an interim again, not a held early final firing.
    assert texts(t.interim("I want a", end_ms=1200)) == [("I want a", False, False)]
    assert t.counters.early_finals == 0


def test_knobs_stay_tunable_with_field_defaults():
    t = TurnTimer()
    assert (t._debounce_s, t._hangover_s, t._timeout_s) == (0.11, 0.18, 0.32)
    clock, t = make(debounce_ms=50, vad_hangover_ms=100, final_timeout_ms=100)
    t.interim("hi")
    t.vad_stopped()
    assert t.next_deadline() == pytest.approx(100.2)


def _early_then_final(clock, t, interim, final, **vad):
    t.vad_started()
    t.interim(interim)
    t.vad_stopped(**vad)
    clock.advance(0.5)
    early = t.poll()
    clock.advance(0.5)
    return early, t.final(final)


def test_after_a_catch_up_early_finals_are_withheld_until_a_shadow_one_proves_complete():
    clock, t = make(debounce_ms=None)
    early, late = _early_then_final(clock, t, "hi this is a test", "Hi, this is a test call.")
    assert texts(early) == [("hi this is a test", True, True)] and [e.text for e in late] == ["call."]
    # Lost bet: the next deadline sends nothing; Google's final carries the segment whole.
    early, late = _early_then_final(clock, t, "I am calling about", "I am calling about my order.")
    assert early == [] and texts(late) == [("I am calling about my order.", True, False)]
    assert t.counters.early_finals_withheld == 1
    # The shadow early final of this segment would have been complete: trust is back.
    early, late = _early_then_final(clock, t, "thank you very much", "Thank you very much.")
    assert early == [] and [e.text for e in late] == ["Thank you very much."]
    early, late = _early_then_final(clock, t, "goodbye", "Goodbye.")
    assert texts(early) == [("goodbye", True, True)] and late == []


def test_complete_early_finals_keep_trust():
    clock, t = make(debounce_ms=None)
    for word in ("yes", "no", "maybe"):
        early, late = _early_then_final(clock, t, word, word.capitalize() + ".")
        assert texts(early) == [(word, True, True)] and late == []
    assert t.counters.early_finals == 3 and t.counters.early_finals_withheld == 0
