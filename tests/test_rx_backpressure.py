"""The pure RX back-pressure mechanism, driven step by step with a FakeClock."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipecat_rxdrain.clock import FakeClock
from pipecat_rxdrain.rx_backpressure import ActionKind, RxBackpressure, RxMode
from pipecat_rxdrain.telemetry import RX_LINE_RE

FRAME_S = 0.020


def make(clock: FakeClock | None = None, **kw) -> tuple[RxBackpressure, FakeClock, list[str]]:
    clock = clock or FakeClock(0.0)
    lines: list[str] = []
    rx = RxBackpressure(clock=clock, emit=lines.append, **kw)
    return rx, clock, lines


def release_one(rx: RxBackpressure, now: float, accept: bool = True):
    action = rx.next_action(now)
    assert action.kind is ActionKind.RELEASE, action
    rx.on_release_result(accept, now)
    return action.item


def release_all(rx: RxBackpressure, now: float) -> list:
    """Release everything queued, letting (fake) time pass whenever the mechanism says wait."""
    out = []
    while rx.pending:
        action = rx.next_action(now)
        if action.kind is ActionKind.WAIT:
            now += action.wait_s
        elif action.kind is ActionKind.RELEASE:
            rx.on_release_result(True, now)
            out.append(action.item)
        else:
            out.append(action.item)
    return out


class Sim:
    """Plays the adapter's role in simulated time: arrivals at given times, a sink that accepts or not.

    Records when each frame was offered and when it was accepted, so tests can
    check cadence and the age added to frames.
    """

    def __init__(self, rx: RxBackpressure, clock: FakeClock, accept=lambda now: True):
        self.rx, self.clock, self.accept = rx, clock, accept
        self.offered_at: dict[int, float] = {}
        self.released_at: dict[int, float] = {}
        self.order: list = []
        self.passed: list = []
        self.q_trace: list[tuple[float, int]] = []

    def run(self, arrivals: list[tuple[float, object]], until: float) -> None:
        arrivals = sorted(arrivals, key=lambda a: a[0])
        i = 0
        rx, clock = self.rx, self.clock
        for _ in range(1_000_000):
            now = clock.now
            rx.report_if_due(now)
            while i < len(arrivals) and arrivals[i][0] <= now:
                _, item = arrivals[i]
                if isinstance(item, tuple) and item[0] == "passenger":
                    rx.add_passenger(item[1])
                else:
                    self.offered_at[item] = now
                    rx.offer(item, now)
                i += 1
            action = rx.next_action(now)
            if action.kind is ActionKind.RELEASE:
                ok = self.accept(now)
                rx.on_release_result(ok, now)
                if ok:
                    self.released_at[action.item] = now
                    self.order.append(action.item)
                self.q_trace.append((now, rx.q))
            elif action.kind is ActionKind.PASS:
                self.passed.append(action.item)
                self.order.append(action.item)
            else:
                next_arrival = arrivals[i][0] if i < len(arrivals) else float("inf")
                target = min(now + action.wait_s, next_arrival)
                if target >= until:
                    return
                clock.set(max(target, now + 1e-12))
        raise AssertionError("simulation did not settle")


def steady(n: int, start: float = 0.0, first_id: int = 0) -> list[tuple[float, int]]:
    return [(start + k * FRAME_S, first_id + k) for k in range(n)]


# -- hysteresis ---------------------------------------------------------------


@pytest.mark.parametrize("high,low", [(100, 20), (120, 30)])
def test_hysteresis_exact_watermarks(high, low):
    rx, clock, lines = make(high_watermark=high, low_watermark=low)
    for k in range(high - 1):
        rx.offer(k, 0.0)
    assert rx.mode == "normal" and rx.q == high - 1
    rx.offer(high - 1, 0.0)
    assert rx.mode == "drain" and rx.q == high
    # Drain releases back-to-back: no wait in between, whatever the clock says.
    while rx.q > low + 1:
        release_one(rx, 0.0)
        assert rx.mode == "drain"
    assert rx.q == low + 1
    release_one(rx, 0.0)
    assert rx.q == low and rx.mode == "normal"
    # Back in normal: the next frame goes now, the rest on the (catch-up) cadence.
    release_one(rx, 0.0)
    action = rx.next_action(0.0)
    assert action.kind is ActionKind.WAIT and action.wait_s == pytest.approx(FRAME_S / 1.5)
    # One line on entering drain and one on leaving it.
    modes = [RX_LINE_RE.match(line)["mode"] for line in lines]
    assert modes == ["drain", "normal"]
    s = rx.stats(0.0)
    assert s.drain_episodes == 1


def test_normal_after_drain_paces_at_real_time_from_now():
    rx, clock, _ = make(high_watermark=10, low_watermark=5, catchup_target=1000)
    for k in range(10):
        rx.offer(k, 1.0)
    while rx.mode == "drain":
        release_one(rx, 1.0)
    assert rx.q == 5
    rx.report_if_due(1.0)  # as the pacing loop does before every next_action
    release_one(rx, 1.0)  # deadline was reset to "now" on leaving drain
    action = rx.next_action(1.0)
    assert action.kind is ActionKind.WAIT and action.wait_s == pytest.approx(FRAME_S)
    assert rx.next_action(1.0 + FRAME_S).kind is ActionKind.RELEASE


def test_offers_below_high_never_enter_drain_and_drain_stays_above_low():
    rx, _, _ = make(high_watermark=100, low_watermark=20)
    for k in range(99):
        rx.offer(k, 0.0)
    assert rx.mode == "normal"
    release_one(rx, 1.0)
    rx.offer(99, 1.0)
    assert rx.q == 99 and rx.mode == "normal"
    rx.offer(100, 1.0)
    assert rx.q == 100 and rx.mode == "drain"
    # Offers while draining keep it draining; releases in drain ignore the clock.
    for k in range(79):
        release_one(rx, 1.0)
        rx.offer(101 + k, 1.0)
    assert rx.mode == "drain" and rx.q == 100


def test_drain_returns_to_normal_when_the_queue_empties():
    rx, _, lines = make(max_queue=10, high_watermark=5, low_watermark=0)
    for k in range(5):
        rx.offer(k, 0.0)
    assert rx.mode == "drain"
    for _ in range(4):
        release_one(rx, 0.0)
    assert rx.mode == "drain" and rx.q == 1
    release_one(rx, 0.0)
    assert rx.q == 0 and rx.mode == "normal"
    assert rx.next_action(0.0).kind is ActionKind.WAIT


def test_discarding_the_backlog_leaves_drain_and_is_not_counted_as_drops():
    rx, _, _ = make()
    for k in range(150):
        rx.offer(k, 0.0)
    assert rx.mode == "drain"
    assert rx.discard_backlog(0.5) == 150
    s = rx.stats(0.5)
    assert (s.mode, s.q, s.drops, s.discarded_on_cancel) == ("normal", 0, 0, 150)
    assert s.time_in_drain_s == pytest.approx(0.5)


def test_time_in_drain_and_episodes_accumulate():
    rx, _, _ = make(max_queue=10, high_watermark=4, low_watermark=1)
    for episode in range(3):
        t0 = episode * 10.0
        for k in range(4):
            rx.offer(k, t0)
        assert rx.stats(t0 + 0.25).time_in_drain_s == pytest.approx(episode * 0.5 + 0.25)
        release_one(rx, t0 + 0.5)
        release_one(rx, t0 + 0.5)
        release_one(rx, t0 + 0.5)
        assert rx.mode == "normal"
        release_one(rx, t0 + 0.5)
    s = rx.stats(100.0)
    assert s.drain_episodes == 3
    assert s.time_in_drain_s == pytest.approx(1.5)


# -- cadence, acceptance, retry -----------------------------------------------


def test_deadline_advances_only_on_accept():
    rx, _, _ = make(retry_interval_ms=5, catchup_target=1000)
    for name in "ABC":
        rx.offer(name, 0.0)
    assert release_one(rx, 0.0) == "A"  # accepted at t=0: next deadline 0.020
    wait = rx.next_action(0.0)
    assert wait.kind is ActionKind.WAIT and wait.wait_s == pytest.approx(0.020)
    assert rx.next_action(0.019).kind is ActionKind.WAIT
    assert release_one(rx, 0.020, accept=False) == "B"  # refused: deadline stays at 0.020
    wait = rx.next_action(0.020)
    assert wait.kind is ActionKind.WAIT and wait.wait_s == pytest.approx(0.005)
    assert release_one(rx, 0.025, accept=False) == "B"
    assert release_one(rx, 0.030, accept=True) == "B"
    # The deadline advanced by one interval from 0.020 (not from 0.030, not twice).
    wait = rx.next_action(0.030)
    assert wait.kind is ActionKind.WAIT and wait.wait_s == pytest.approx(0.010)
    assert release_one(rx, 0.040) == "C"
    s = rx.stats(0.04)
    assert (s.frames_out, s.refusals, s.drops) == (3, 2, 0)


def test_refused_frame_is_retried_first_and_order_is_kept():
    calls = {"n": 0}

    def accept(now):
        calls["n"] += 1
        return calls["n"] % 3 != 0  # every third attempt is refused

    rx, clock, _ = make()
    sim = Sim(rx, clock, accept)
    sim.run(steady(300), until=10.0)
    assert sim.order == list(range(300))
    s = rx.stats()
    assert s.refusals > 50 and s.drops == 0 and s.frames_out == 300


def test_refusing_sink_in_drain_is_retried_not_spun():
    rx, _, _ = make(retry_interval_ms=5)
    for k in range(100):
        rx.offer(k, 0.0)
    assert rx.mode == "drain"
    assert release_one(rx, 0.0, accept=False) == 0
    wait = rx.next_action(0.001)
    assert wait.kind is ActionKind.WAIT and wait.wait_s == pytest.approx(0.004)
    assert release_one(rx, 0.005) == 0
    assert release_one(rx, 0.005) == 1


def test_steady_stream_is_released_on_a_drift_free_cadence():
    rx, clock, _ = make()
    sim = Sim(rx, clock)
    sim.run(steady(500), until=11.0)
    assert sim.order == list(range(500))
    for k in range(500):
        assert sim.released_at[k] == pytest.approx(k * FRAME_S, abs=1e-9)
    assert rx.stats().peak_q == 1


def test_jittered_arrivals_do_not_accumulate_a_queue():
    rx, clock, _ = make()
    sim = Sim(rx, clock)
    jitter = [0.0, 0.007, -0.006, 0.004, -0.003]
    arrivals = [(max(0.0, k * FRAME_S + jitter[k % 5]), k) for k in range(500)]
    sim.run(arrivals, until=11.0)
    assert sim.order == list(range(500))
    ages = [sim.released_at[k] - sim.offered_at[k] for k in range(500)]
    assert max(ages) < 0.030
    assert rx.stats().peak_q <= 3


def test_idle_queue_does_not_save_up_burst_credit():
    rx, _, _ = make(catchup_target=1000)
    rx.offer("a", 0.0)
    release_one(rx, 0.0)
    # Idle for 5 s, then three frames at once: only the first goes now, the rest at 20 ms cadence.
    for name in "bcd":
        rx.offer(name, 5.0)
    assert release_one(rx, 5.0) == "b"
    assert rx.next_action(5.0).kind is ActionKind.WAIT
    assert release_one(rx, 5.02) == "c"
    assert rx.next_action(5.03).kind is ActionKind.WAIT
    assert release_one(rx, 5.04) == "d"


def test_nothing_queued_means_waiting_for_the_next_telemetry_line_not_spinning():
    rx, _, _ = make(telemetry_interval_s=1.0)
    action = rx.next_action(0.25)
    assert action.kind is ActionKind.WAIT and action.wait_s == pytest.approx(0.75)


# -- drop-oldest ---------------------------------------------------------------


def test_drop_oldest_at_200_counts_every_drop():
    rx, _, _ = make()
    dropped = [rx.offer(k, 0.0) for k in range(257)]
    assert dropped == [False] * 200 + [True] * 57
    s = rx.stats(0.0)
    assert (s.q, s.drops, s.frames_in, s.peak_q) == (200, 57, 257, 200)
    # The 57 oldest went; the rest come out in order.
    assert release_all(rx, 0.0) == list(range(57, 257))


def test_overflow_spares_the_frame_being_pushed():
    rx, _, _ = make(max_queue=3, high_watermark=3, low_watermark=0)
    for k in range(3):
        rx.offer(k, 0.0)
    action = rx.next_action(0.0)
    assert action.kind is ActionKind.RELEASE and action.item == 0
    rx.offer(3, 0.0)  # arrives while frame 0 is in flight: frame 1 is the one dropped
    rx.on_release_result(True, 0.0)
    out = [release_one(rx, 0.0) for _ in range(rx.q)]
    assert out == [2, 3]
    s = rx.stats(0.0)
    assert (s.frames_out, s.drops) == (3, 1)


def test_result_after_cancel_is_ignored():
    rx, _, _ = make()
    rx.offer("a", 0.0)
    assert rx.next_action(0.0).kind is ActionKind.RELEASE
    rx.discard_backlog(0.0)
    rx.offer("b", 0.0)
    rx.on_release_result(True, 0.0)  # the in-flight "a" was discarded; "b" must stay queued
    assert rx.q == 1 and rx.stats(0.0).frames_out == 0


# -- catch-up ------------------------------------------------------------------


def _bunch_scenario(catchup_speed: float) -> tuple[Sim, float]:
    """Steady 50 fps; a 500 ms hiccup holds 25 frames that then arrive at once."""
    rx, clock, _ = make(catchup_speed=catchup_speed)
    sim = Sim(rx, clock)
    arrivals = steady(100)  # 0 .. 1.98 s, on time
    held_at = 2.5
    arrivals += [(held_at, 100 + k) for k in range(25)]  # frames of 2.0 .. 2.48 s arrive at 2.5 s
    arrivals += [(held_at + (k + 1) * FRAME_S, 125 + k) for k in range(200)]
    sim.run(arrivals, until=7.0)
    assert sim.order == list(range(325))
    return sim, held_at


LAST_ARRIVAL = 2.5 + 200 * FRAME_S


def test_catch_up_clears_a_25_frame_bunch_within_2_s_of_audio():
    sim, held_at = _bunch_scenario(1.5)
    assert max(q for _, q in sim.q_trace) >= 24
    cleared = [t for t, q in sim.q_trace if t >= held_at and q <= 2]
    assert cleared and cleared[0] - held_at <= 2.0
    # ... and it stays cleared: no standing queue for the rest of the call.
    assert all(q <= 2 for t, q in sim.q_trace if t >= held_at + 2.0)
    # Steady state: at most one frame waits behind the head, so a frame ages at most 2 intervals.
    late_ages = [sim.released_at[k] - sim.offered_at[k] for k in range(250, 325)]
    assert max(late_ages) <= 2 * FRAME_S + 1e-6


def test_without_catch_up_the_bunch_becomes_a_standing_queue():
    # The reason for the rule: at 1.0x the 25 frames never leave.
    sim, held_at = _bunch_scenario(1.0)
    assert all(q >= 20 for t, q in sim.q_trace if held_at + 2.0 <= t < LAST_ARRIVAL)


# -- passengers, flush -----------------------------------------------------------


def test_passengers_keep_their_place_and_are_never_dropped():
    rx, _, _ = make(max_queue=5, high_watermark=5, low_watermark=0)
    for k in range(3):
        rx.offer(k, 0.0)
    rx.add_passenger("P1")
    for k in range(3, 10):
        rx.offer(k, 0.0)  # overflows: 0..4 dropped
    rx.add_passenger("P2")
    out = []
    while rx.pending:
        action = rx.next_action(0.0)
        out.append(action.item)
        if action.kind is ActionKind.RELEASE:
            rx.on_release_result(True, 0.0)
    assert out == ["P1", 5, 6, 7, 8, 9, "P2"]
    s = rx.stats(0.0)
    assert (s.q, s.drops, s.passengers_out) == (0, 5, 2)


def test_drop_passengers_by_predicate():
    rx, _, _ = make()
    rx.offer(0, 0.0)
    for p in ("keep", "drop", "keep2"):
        rx.add_passenger(p)
    assert rx.drop_passengers(lambda p: p == "drop") == 1
    release_one(rx, 0.0)
    assert [rx.next_action(0.0).item for _ in range(2)] == ["keep", "keep2"]
    assert rx.stats(0.0).passengers_dropped == 1


def test_flush_releases_back_to_back_then_passes_the_end_marker():
    rx, _, _ = make(catchup_speed=1.0)
    for k in range(30):
        rx.offer(k, 0.0)
    rx.add_passenger("END")
    rx.start_flush(0.0)
    out = []
    while rx.pending:
        action = rx.next_action(0.0)  # the clock never moves: no cadence while flushing
        assert action.kind is not ActionKind.WAIT
        out.append(action.item)
        if action.kind is ActionKind.RELEASE:
            rx.on_release_result(True, 0.0)
    assert out == list(range(30)) + ["END"]


def test_flush_gives_up_on_a_sink_that_never_accepts_and_counts_it():
    rx, clock, _ = make(flush_timeout_s=2.0)
    sim = Sim(rx, clock, accept=lambda now: False)
    for k in range(10):
        rx.offer(k, 0.0)
    rx.add_passenger("END")
    rx.start_flush(0.0)
    sim.run([], until=3.0)
    assert sim.passed == ["END"]
    s = rx.stats()
    assert (s.discarded_on_end, s.frames_out, s.drops, s.q) == (10, 0, 0, 0)


# -- telemetry -----------------------------------------------------------------


def test_telemetry_once_per_second_with_exact_format():
    rx, clock, lines = make(catchup_target=1000)
    sim = Sim(rx, clock)
    sim.run(steady(250, start=0.01), until=5.0 + 1e-9)
    assert len(lines) == 5
    for line in lines:
        m = RX_LINE_RE.match(line)
        assert m, line
        assert m["mode"] == "normal" and m["drops"] == "0"
        assert int(m["fps_in"]) == 50
        assert int(m["q"]) <= 1


def test_telemetry_keeps_ticking_while_idle():
    rx, clock, lines = make()
    sim = Sim(rx, clock)
    sim.run([], until=3.5)
    assert len(lines) == 3
    assert all(RX_LINE_RE.match(line)["fps_in"] == "0" for line in lines)


def test_a_short_drain_is_never_invisible():
    # A drain that starts and ends between two periodic lines still logs both edges.
    rx, clock, lines = make()
    for k in range(120):
        rx.offer(k, 0.3)
    while rx.mode == "drain":
        release_one(rx, 0.31)
    assert [RX_LINE_RE.match(line)["mode"] for line in lines] == ["drain", "normal"]
    first = RX_LINE_RE.match(lines[0])
    assert first["q"] == "100"
    assert RX_LINE_RE.match(lines[1])["q"] == "20"
    # Periodic lines go on afterwards at the usual rate.
    assert rx.report_if_due(0.5) is None
    assert rx.report_if_due(1.31) is not None


def test_write_ms_and_drops_in_the_line_and_stats():
    rx, _, lines = make(max_queue=5, high_watermark=5, low_watermark=0)
    rx.reset_telemetry(0.0)
    for k in range(8):
        rx.offer(k, 0.0)  # 3 dropped, enters drain
    for write_s in (0.002, 0.004):
        assert rx.next_action(0.1).kind is ActionKind.RELEASE
        rx.on_release_result(True, 0.1, write_s=write_s)
    line = rx.report_if_due(1.0)
    m = RX_LINE_RE.match(line)
    assert (m["mode"], m["q"], m["drops"], m["write_ms"]) == ("drain", "3", "3", "3.00")
    s = rx.stats(1.0)
    assert (s.mode, s.q, s.drops, s.write_ms) == ("drain", 3, 3, pytest.approx(3.0))


# -- validation ----------------------------------------------------------------


@pytest.mark.parametrize(
    "kw,needle",
    [
        ({"high_watermark": 20, "low_watermark": 20}, "low_watermark=20, high_watermark=20"),
        ({"high_watermark": 250}, "high_watermark=250, max_queue=200"),
        ({"low_watermark": -1}, "low_watermark=-1"),
        ({"max_queue": 50}, "high_watermark=100, max_queue=50"),
        ({"frame_interval_ms": 0}, "frame_interval_ms=0"),
        ({"catchup_speed": 0.5}, "catchup_speed=0.5"),
        ({"catchup_target": -1}, "catchup_target=-1"),
        ({"retry_interval_ms": 0}, "retry_interval_ms=0"),
        ({"telemetry_interval_s": 0}, "telemetry_interval_s=0"),
    ],
)
def test_bad_parameters_raise_value_error_naming_them(kw, needle):
    with pytest.raises(ValueError) as err:
        RxBackpressure(**kw)
    assert needle in str(err.value)


def test_mode_enum_values_are_the_telemetry_words():
    assert {m.value for m in RxMode} == {"normal", "drain"}


# -- invariants under arbitrary interleavings --------------------------------------


@settings(max_examples=150, deadline=None)
@given(
    ops=st.lists(
        st.tuples(st.sampled_from(["offer", "offer", "offer", "step", "refuse", "tick", "passenger"]), st.integers(1, 30)),
        max_size=60,
    ),
    max_queue=st.integers(1, 40),
    data=st.data(),
)
def test_invariants_hold_for_any_sequence(ops, max_queue, data):
    high = data.draw(st.integers(1, max_queue))
    low = data.draw(st.integers(0, high - 1))
    rx, clock, lines = make(max_queue=max_queue, high_watermark=high, low_watermark=low)
    next_id = 0
    out: list = []
    for op, n in ops:
        for _ in range(n):
            if op == "offer":
                rx.offer(next_id, clock.now)
                next_id += 1
            elif op == "passenger":
                rx.add_passenger(("P", next_id))
            elif op == "tick":
                clock.advance(0.01)
                rx.report_if_due()
            else:
                action = rx.next_action()
                if action.kind is ActionKind.RELEASE:
                    ok = op == "step"
                    rx.on_release_result(ok)
                    if ok:
                        out.append(action.item)
                elif action.kind is ActionKind.PASS:
                    out.append(action.item)
                else:
                    clock.advance(action.wait_s)
            assert rx.q <= max_queue
            assert rx.mode in ("normal", "drain")
            if rx.mode == "drain":
                assert rx.q > low
    s = rx.stats()
    audio_out = [x for x in out if not isinstance(x, tuple)]
    assert audio_out == sorted(audio_out)  # never reordered
    assert s.frames_in == next_id == s.frames_out + s.q + s.drops
    assert s.frames_out == len(audio_out)
    for line in lines:
        assert RX_LINE_RE.match(line)


def test_mode_change_line_reports_frames_of_the_last_second_and_keeps_the_periodic_window():
    lines: list[str] = []
    clock = FakeClock(0.0)
    rx = RxBackpressure(clock=clock, emit=lines.append)
    # 0.9 s of steady audio, released on time: 45 frames offered.
    for k in range(45):
        clock.set(k * 0.02)
        rx.offer(k)
        release_one(rx, clock.now)
    # Then a 150-frame burst at t=0.95 s: drain starts mid-window.
    clock.set(0.95)
    for k in range(150):
        rx.offer(1000 + k)
    assert rx.mode == "drain"
    drain_line = RX_LINE_RE.match(lines[-1])
    assert drain_line["mode"] == "drain"
    # Logged as the 100th burst frame crossed the high watermark. fps_in counts the frames
    # offered in the last second (45 + 100), not a rate scaled up from a few milliseconds.
    assert int(drain_line["fps_in"]) == 145
    assert int(drain_line["q"]) == 100
    # The extra line did not restart the periodic window: the next periodic line is still due at 1.0 s.
    assert rx.next_report_in(0.95) == pytest.approx(0.05)
    clock.set(1.0)
    assert rx.report_if_due() is not None
    # At t=1.9 s the steady frames (offered up to t=0.88 s) have left the last second; the burst has not.
    assert rx.stats(1.5).fps_in == 19 + 150  # steady frames offered at 0.52..0.88 s are still inside
    assert rx.stats(1.9).fps_in == 150
