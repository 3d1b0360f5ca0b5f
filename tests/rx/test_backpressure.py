"""The pure RX back-pressure mechanism, driven step by step with a FakeClock.

The Sim plays the adapter: after every offer it asks ``next_action`` at the same
instant, which is exactly what ``RxDrainProcessor`` does inline from
``process_frame``, so "released at its arrival time" means "released inline".
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipecat_rxdrain.rx.backpressure import ActionKind, RxBackpressure, RxMode
from pipecat_rxdrain.telemetry import RX_LINE_RE
from pipecat_rxdrain.testing import FakeClock

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
    """Release everything queued at ``now``: the mechanism must never say wait (nothing is paced)."""
    out = []
    while rx.pending:
        action = rx.next_action(now)
        assert action.kind is not ActionKind.WAIT, f"held {rx.q} frames of audio at t={now}"
        if action.kind is ActionKind.RELEASE:
            rx.on_release_result(True, now)
            out.extend(action.items)
        else:
            out.append(action.item)
    return out


class Sim:
    """Plays the adapter's role in simulated time: arrivals at given times, a sink that accepts or not.

    Records when each frame was offered and when it was accepted, so tests can
    check cadence and the age added to frames. Arrivals are offered one at a
    time, each followed by a step, as ``RxDrainProcessor.process_frame`` does.
    """

    def __init__(self, rx: RxBackpressure, clock: FakeClock, accept=lambda now: True, duration_s=None):
        self.rx, self.clock, self.accept = rx, clock, accept
        self.duration_s = duration_s
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
            if i < len(arrivals) and arrivals[i][0] <= now:  # one at a time, each followed by a step
                _, item = arrivals[i]
                if isinstance(item, tuple) and item[0] == "passenger":
                    rx.add_passenger(item[1])
                else:
                    self.offered_at[item] = now
                    rx.offer(item, now, duration_s=self.duration_s)
                i += 1
            action = rx.next_action(now)
            if action.kind is ActionKind.RELEASE:
                ok = self.accept(now)
                rx.on_release_result(ok, now)
                if ok:
                    for item in action.items:
                        self.released_at[item] = now
                        self.order.append(item)
                self.q_trace.append((now, rx.q))
            elif action.kind is ActionKind.PASS:
                self.passed.append(action.item)
                self.order.append(action.item)
            else:
                next_arrival = arrivals[i][0] if i < len(arrivals) else float("inf")
                if next_arrival <= now:
                    continue
                target = min(now + action.wait_s, next_arrival)
                if target >= until:
                    return
                clock.set(max(target, now + 1e-12))
        raise AssertionError("simulation did not settle")


def steady(n: int, start: float = 0.0, first_id: int = 0) -> list[tuple[float, int]]:
    return [(start + k * FRAME_S, first_id + k) for k in range(n)]


# -- work-conserving release ----------------------------------------------------


def test_a_frame_offered_to_an_empty_queue_is_released_in_the_same_step():
    rx, _, _ = make()
    for k in range(3):
        now = 7.0 + k * FRAME_S
        rx.offer(k, now)
        action = rx.next_action(now)  # same instant: no wait, no timer
        assert action.kind is ActionKind.RELEASE and action.item == k and action.items == (k,)
        rx.on_release_result(True, now)
        assert rx.idle
    s = rx.stats(7.1)
    assert (s.frames_out, s.q, s.peak_q) == (3, 0, 1)


def test_not_idle_while_a_refusal_or_a_passenger_or_a_release_is_pending():
    rx, _, _ = make()
    rx.offer("a", 0.0)
    assert not rx.idle
    action = rx.next_action(0.0)
    assert not rx.idle and rx.in_flight
    # While a release is in flight nothing else is handed out (the inline path and the pacing task share it).
    rx.offer("b", 0.0)
    assert rx.next_action(0.0).kind is ActionKind.WAIT
    rx.on_release_result(False, 0.0)
    assert not rx.idle  # "a" is pending, refused
    assert release_one(rx, 0.005) == "a"
    assert release_one(rx, 0.005) == "b"
    assert rx.idle
    rx.add_passenger("P")
    assert not rx.idle


def test_steady_stream_leaves_at_arrival_for_a_long_call():
    # 10 minutes at 50 fps: every frame leaves the moment it arrives, at minute 10 as at second 1.
    rx, clock, _ = make()
    sim = Sim(rx, clock)
    n = 30_000
    sim.run(steady(n), until=n * FRAME_S + 1.0)
    assert sim.order == list(range(n))
    assert all(sim.released_at[k] == sim.offered_at[k] for k in range(n))
    assert rx.stats().peak_q == 1


def test_jitter_and_hiccups_never_ratchet_the_release_time():
    # The old grid locked its deadline onto the latest arrival and never came back: every early
    # frame after a late one waited. Here a frame never waits, however late the ones before it were.
    rx, clock, _ = make()
    sim = Sim(rx, clock)
    jitter = [0.0, 0.008, -0.008, 0.004, -0.003, 0.007, -0.006]
    arrivals = [(max(0.0, k * FRAME_S + jitter[k % 7]), k) for k in range(5000)]
    # ... plus a 300 ms hiccup every 10 s: those frames all arrive at its end.
    arrivals = [(max(t, (t // 10.0) * 10.0 + 0.3) if t % 10.0 < 0.3 and t > 1 else t, k) for t, k in arrivals]
    sim.run(arrivals, until=5000 * FRAME_S + 1.0)
    assert sim.order == list(range(5000))
    ages = [sim.released_at[k] - sim.offered_at[k] for k in range(5000)]
    assert max(ages) == 0.0
    assert rx.stats().peak_q == 1


@pytest.mark.parametrize("chunk_ms", [20, 95])
def test_bunches_are_released_as_they_arrive(chunk_ms):
    # 25 x 20 ms (or 5 x 95 ms) every 500 ms: below the high watermark, and no 1.5x catch-up to wait for.
    rx, clock, _ = make()
    per = 500 // chunk_ms
    arrivals = []
    for b in range(40):
        t = 0.5 * (b + 1)
        arrivals += [(t, b * per + k) for k in range(per)]
    sim = Sim(rx, clock, duration_s=chunk_ms / 1000)
    sim.run(arrivals, until=25.0)
    assert sim.order == list(range(40 * per))
    assert all(sim.released_at[i] == sim.offered_at[i] for i in sim.order)
    assert rx.stats().drain_episodes == 0


# -- the rate bound ---------------------------------------------------------------


def test_a_sender_faster_than_real_time_is_held_to_the_bound_with_no_drift():
    """1.25x real time, 20 minutes of audio: at most lead_ms ahead of the wall clock, exactly, all call long."""
    rx, clock, _ = make(lead_ms=1000, max_queue=100_000, high_watermark=100_000, low_watermark=0)
    sim = Sim(rx, clock)
    n = 60_000  # 20 min of audio, sent in 16 min
    sim.run([(k * FRAME_S / 1.25, k) for k in range(n)], until=n * FRAME_S + 2.0)
    assert sim.order == list(range(n))
    anchor = rx.anchor
    last_arrival = (n - 1) * FRAME_S / 1.25
    held = [k for k in range(n) if sim.released_at[k] <= last_arrival]
    assert len(held) > 45_000
    for k in held:
        # the audio released before frame k (k frames) never runs more than the lead ahead of the clock
        assert k * FRAME_S <= (sim.released_at[k] - anchor) + 1.0 + 1e-9
    # ... and the bound is a bound, not a brake: once ahead by the lead, frame k leaves exactly when
    # the clock says it may (no drift after 16 minutes, no ratchet), not later.
    for k in (1000, 30_000, held[-1]):
        assert sim.released_at[k] == pytest.approx(anchor + k * FRAME_S - 1.0, abs=1e-6)
    # Once the sender stops (its input is no longer ahead of real time), what the bound still
    # holds is released as soon as the last half second's input is back under real time.
    rest = [sim.released_at[k] for k in range(held[-1] + 1, n)]
    assert rest and max(rest) <= last_arrival + 1.0 + 1e-6


def test_the_bound_is_anchored_at_the_first_frame_and_idle_time_is_never_reset():
    rx, clock, _ = make(lead_ms=200)
    rx.offer("a", 10.0)
    release_one(rx, 10.0)
    # 5 s idle, then 3 s of audio at once (a sender catching up): the bound allows what the clock allows.
    for k in range(150):
        rx.offer(k, 15.0)
    assert rx.mode == "drain"  # 150 >= 100: back-to-back, lifted bound
    released = release_all(rx, 15.0)
    assert released == list(range(150))  # the tail after drain left at once too
    assert rx.paced_audio_s == pytest.approx(0.02 + 20 * FRAME_S)  # drain audio is not charged
    assert rx.anchor == 10.0


def test_lead_zero_means_no_chunk_starts_before_its_time():
    rx, _, _ = make(lead_ms=0)
    for k in range(60):  # 1.2 s of audio at once: the input is ahead of real time
        rx.offer(k, 0.0)
    assert release_one(rx, 0.0) == 0
    action = rx.next_action(0.0)
    assert action.kind is ActionKind.WAIT and action.wait_s == pytest.approx(FRAME_S)
    assert rx.next_action(FRAME_S - 0.001).kind is ActionKind.WAIT
    assert release_one(rx, FRAME_S) == 1


# -- acceptance, retry ----------------------------------------------------------------


def test_the_deadline_advances_only_on_accept_by_the_accepted_duration():
    rx, _, _ = make(retry_interval_ms=5, lead_ms=0)
    rx.offer("A", 0.0, duration_s=0.095)
    rx.offer("B", 0.0, duration_s=0.020)
    rx.offer("C", 0.0, duration_s=0.020)
    for k in range(60):
        rx.offer(k, 0.0)  # more behind them: the input is 1.3 s ahead of real time, the bound holds it
    assert release_one(rx, 0.0) == "A"
    assert rx.paced_audio_s == pytest.approx(0.095)
    wait = rx.next_action(0.0)
    assert wait.kind is ActionKind.WAIT and wait.wait_s == pytest.approx(0.095)
    assert release_one(rx, 0.095, accept=False) == "B"  # refused: the deadline stays
    assert rx.paced_audio_s == pytest.approx(0.095)
    wait = rx.next_action(0.095)
    assert wait.kind is ActionKind.WAIT and wait.wait_s == pytest.approx(0.005)
    assert release_one(rx, 0.100, accept=False) == "B"
    assert release_one(rx, 0.105, accept=True) == "B"
    # Advanced by B's 20 ms from where it was (not from the time of acceptance, not twice).
    assert rx.paced_audio_s == pytest.approx(0.115)
    wait = rx.next_action(0.105)
    assert wait.kind is ActionKind.WAIT and wait.wait_s == pytest.approx(0.010)
    assert release_one(rx, 0.115) == "C"
    s = rx.stats(0.2)
    assert (s.frames_out, s.refusals, s.drops) == (3, 2, 0)


def test_the_bound_never_leaves_a_standing_queue_after_a_one_time_offset():
    """A start-up backlog: 3 s of audio arrive at once with the first frame, then real time.

    Past the 1 s lead the bound holds the rest only while the last 500 ms of input are ahead of real
    time; then it is a one-time offset, released at once, and later frames leave as they arrive
    (an anchored bound alone would keep ~2 s queued for the rest of the call).
    """
    rx, clock, _ = make(high_watermark=200, low_watermark=0)
    sim = Sim(rx, clock)
    arrivals = [(0.0, k) for k in range(150)] + [(k * FRAME_S, 149 + k) for k in range(1, 500)]
    sim.run(arrivals, until=12.0)
    assert sim.order == list(range(649))
    assert rx.stats().drain_episodes == 0
    assert max(sim.released_at.values()) <= 10.0
    # from 0.6 s on, nothing waits: the offset was forgiven, not paced out at real time
    assert all(sim.released_at[k] == sim.offered_at[k] for k in range(150, 649) if sim.offered_at[k] >= 0.6)
    assert max(sim.released_at[k] - sim.offered_at[k] for k in range(649)) <= 0.5 + 1e-9


def test_refused_frame_stays_pending_and_is_retried_first():
    rx, _, _ = make(retry_interval_ms=5)
    rx.offer("A", 0.0)
    assert release_one(rx, 0.0, accept=False) == "A"
    for k in range(5):
        rx.offer(k, 0.001)  # newer audio arrives behind the refused frame
    assert rx.q == 6 and rx.stats(0.001).refusals == 1
    assert rx.next_action(0.004).kind is ActionKind.WAIT  # retry not due yet: no spinning
    assert release_one(rx, 0.005, accept=False) == "A"
    assert release_one(rx, 0.010) == "A"
    assert release_all(rx, 0.010) == list(range(5))


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


def test_a_backlog_below_high_leaves_as_fast_as_the_sink_accepts():
    # The sink refuses for 400 ms (20 frames pile up, below the high watermark); once it accepts,
    # the backlog goes back-to-back in normal mode, no 1.5x catch-up.
    rx, clock, _ = make()
    sim = Sim(rx, clock, accept=lambda now: not 1.0 <= now < 1.4 - 1e-9)
    sim.run(steady(100), until=3.0)
    assert sim.order == list(range(100))
    assert rx.stats().drain_episodes == 0
    backlog = [k for k in range(100) if sim.offered_at[k] < 1.4 and sim.offered_at[k] >= 1.0]
    assert backlog and all(sim.released_at[k] == pytest.approx(1.4) for k in backlog)
    assert all(sim.released_at[k] == sim.offered_at[k] for k in range(100) if sim.offered_at[k] > 1.4)


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


def test_nothing_queued_means_waiting_for_the_next_telemetry_line_not_spinning():
    rx, _, _ = make(telemetry_interval_s=1.0)
    action = rx.next_action(0.25)
    assert action.kind is ActionKind.WAIT and action.wait_s == pytest.approx(0.75)


# -- hysteresis, drain, drop-oldest: in audio time -------------------------------------


@pytest.mark.parametrize("high,low", [(100, 20), (120, 30)])
def test_hysteresis_exact_watermarks(high, low):
    rx, clock, lines = make(high_watermark=high, low_watermark=low)
    for k in range(high - 1):
        rx.offer(k, 0.0)
    assert rx.mode == "normal" and rx.q == high - 1
    rx.offer(high - 1, 0.0)
    assert rx.mode == "drain" and rx.mode is RxMode.DRAIN and rx.q == high
    # Drain releases back-to-back: no wait in between, whatever the clock says.
    while rx.q > low + 1:
        release_one(rx, 0.0)
        assert rx.mode == "drain"
    assert rx.q == low + 1
    release_one(rx, 0.0)
    assert rx.q == low and rx.mode == "normal"
    # Back in normal, the tail leaves at once too (drain audio is not charged to the rate bound).
    assert len(release_all(rx, 0.0)) == low
    modes = [RX_LINE_RE.match(line)["mode"] for line in lines]
    assert modes == ["drain", "normal"]
    assert rx.stats(0.0).drain_episodes == 1


# 95 ms: what Pipecat's 16 kHz pipelines deliver from Twilio (4.75 frame equivalents per chunk).
@pytest.mark.parametrize(
    "chunk_ms,enter_at,leave_at",
    [(20, 100, 20), (95, 22, 4), (60, 34, 6)],  # chunks for q >= 100 and for q <= 20
)
def test_hysteresis_counts_audio_not_frames(chunk_ms, enter_at, leave_at):
    rx, _, _ = make()
    d = chunk_ms / 1000
    for k in range(enter_at - 1):
        rx.offer(k, 0.0, duration_s=d)
    assert rx.mode == "normal" and rx.q == pytest.approx((enter_at - 1) * chunk_ms / 20)
    rx.offer(enter_at - 1, 0.0, duration_s=d)
    assert rx.mode == "drain" and rx.q >= 100
    while rx.queued_chunks > leave_at + 1:
        release_one(rx, 0.0)
        assert rx.mode == "drain"
    release_one(rx, 0.0)
    assert rx.mode == "normal" and rx.queued_chunks == leave_at and rx.q <= 20


@pytest.mark.parametrize("chunk_ms,kept", [(20, 200), (95, 42)])
def test_drop_oldest_in_audio_time(chunk_ms, kept):
    rx, _, _ = make()
    d = chunk_ms / 1000
    n = kept + 57
    dropped = [rx.offer(k, 0.0, duration_s=d) for k in range(n)]
    assert dropped == [False] * kept + [True] * 57
    s = rx.stats(0.0)
    assert s.q <= 200 and s.q == pytest.approx(kept * chunk_ms / 20)
    assert s.drops == pytest.approx(57 * chunk_ms / 20) and s.chunks_dropped == 57
    assert s.audio_in == pytest.approx(s.audio_out + s.q + s.drops)
    # The 57 oldest went; the rest come out in order.
    assert release_all(rx, 0.0) == list(range(57, n))


def test_drop_oldest_at_200_counts_every_drop():
    rx, _, _ = make()
    dropped = [rx.offer(k, 0.0) for k in range(257)]
    assert dropped == [False] * 200 + [True] * 57
    s = rx.stats(0.0)
    assert (s.q, s.drops, s.frames_in, s.peak_q) == (200, 57, 257, 200)
    assert release_all(rx, 0.0) == list(range(57, 257))


def test_a_long_chunk_drops_as_much_older_audio_as_it_needs():
    rx, _, _ = make(max_queue=10, high_watermark=10, low_watermark=0)
    for k in range(10):
        rx.offer(k, 0.0)  # 10 x 20 ms: full
    assert rx.offer("big", 0.0, duration_s=0.095)  # 4.75 units: the 5 oldest go
    s = rx.stats(0.0)
    assert s.chunks_dropped == 5 and s.drops == 5 and s.q == pytest.approx(9.75)
    assert release_all(rx, 0.0) == [5, 6, 7, 8, 9, "big"]


def test_overflow_spares_the_frame_being_pushed():
    rx, _, _ = make(max_queue=3, high_watermark=3, low_watermark=0)
    for k in range(3):
        rx.offer(k, 0.0)
    action = rx.next_action(0.0)
    assert action.kind is ActionKind.RELEASE and action.item == 0
    rx.offer(3, 0.0)  # arrives while frame 0 is in flight: frame 1 is the one dropped
    rx.on_release_result(True, 0.0)
    out = [release_one(rx, 0.0) for _ in range(rx.queued_chunks)]
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


def test_leaving_drain_releases_the_tail_of_a_flood_at_once():
    # 7 s of audio at once at call start (far beyond the 1 s lead). Drain takes it down to the low
    # watermark back-to-back; the last 20 frames must not wait for the wall clock to catch up.
    rx, clock, _ = make(max_queue=400)
    sim = Sim(rx, clock)
    sim.run([(0.0, k) for k in range(350)], until=1.0)
    assert sim.order == list(range(350))
    assert max(sim.released_at.values()) == 0.0
    assert rx.stats(0.0).drain_episodes == 1


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


# -- merging a backlog (optional) ---------------------------------------------------------


def test_merging_is_off_by_default():
    rx, _, _ = make()
    for k in range(10):
        rx.offer(k, 0.0)
    action = rx.next_action(0.0)
    assert action.items == (0,)


def test_a_backlog_is_merged_into_chunks_of_at_most_batch_ms():
    rx, _, _ = make(merge_backlog=True, batch_ms=60)
    for k in range(8):
        rx.offer(k, 0.0)
    chunks = []
    while rx.pending:
        action = rx.next_action(0.0)
        chunks.append(action.items)
        rx.on_release_result(True, 0.0)
    assert chunks == [(0, 1, 2), (3, 4, 5), (6, 7)]
    s = rx.stats(0.0)
    assert (s.frames_out, s.releases, s.q) == (8, 3, 0)


def test_merging_never_crosses_a_passenger_or_a_format_change_and_a_lone_chunk_is_not_held():
    rx, _, _ = make(merge_backlog=True, batch_ms=100)
    rx.offer("a", 0.0)
    assert rx.next_action(0.0).items == ("a",)  # alone: released now, not held for a partner
    rx.on_release_result(True, 0.0)
    rx.offer("b", 0.0, key=8000)
    rx.offer("c", 0.0, key=8000)
    rx.add_passenger("P")
    rx.offer("d", 0.0, key=8000)
    rx.offer("e", 0.0, key=16000)
    rx.offer("f", 0.0, key=16000)
    out = []
    while rx.pending:
        action = rx.next_action(0.0)
        out.append(action.items if action.kind is ActionKind.RELEASE else action.item)
        if action.kind is ActionKind.RELEASE:
            rx.on_release_result(True, 0.0)
    assert out == [("b", "c"), "P", ("d",), ("e", "f")]


def test_a_refused_merged_chunk_is_retried_first():
    rx, _, _ = make(merge_backlog=True)
    for k in range(4):
        rx.offer(k, 0.0)
    assert rx.next_action(0.0).items == (0, 1, 2)
    rx.on_release_result(False, 0.0)
    assert rx.q == 4
    assert rx.next_action(0.005).items == (0, 1, 2)
    rx.on_release_result(True, 0.005)
    assert rx.next_action(0.005).items == (3,)


def test_merging_respects_the_rate_bound():
    rx, _, _ = make(merge_backlog=True, lead_ms=40)
    for k in range(60):  # 1.2 s at once: ahead of real time, so the bound holds
        rx.offer(k, 0.0)
    # lead 40 ms: frames starting at 0, 20 and 40 ms of audio may go at t=0; the next one at t=20 ms.
    assert rx.next_action(0.0).items == (0, 1, 2)
    rx.on_release_result(True, 0.0)
    action = rx.next_action(0.0)
    assert action.kind is ActionKind.WAIT and action.wait_s == pytest.approx(0.020)
    assert rx.next_action(0.020).items == (3,)


# -- busy merge ------------------------------------------------------------------


class Level:
    """A busy level the test sets by hand (BusyMeter's place)."""

    def __init__(self, value: int = 0) -> None:
        self.value = value

    def __call__(self) -> int:
        return self.value


def stream(rx: RxBackpressure, clock: FakeClock, n: int, every_s: float = FRAME_S) -> list[tuple[float, tuple]]:
    """Offer n frames ``every_s`` apart in simulated time, stepping as the adapter does (each
    offer, then every wait it is told, to the millisecond); returns (time, items) per release."""
    out: list[tuple[float, tuple]] = []
    end = n * every_s + 0.5
    nxt = 0
    while clock.now <= end:
        if nxt < n and clock.now + 1e-9 >= nxt * every_s:
            rx.offer(nxt, clock.now)
            nxt += 1
        while True:
            action = rx.next_action(clock.now)
            if action.kind is not ActionKind.RELEASE:
                break
            rx.on_release_result(True, clock.now)
            out.append((round(clock.now, 6), action.items))
        if nxt >= n and not rx.pending:
            break
        clock.advance(0.001)
    return out


def test_at_busy_level_0_every_frame_leaves_the_moment_it_arrives():
    rx, clock, _ = make(busy_level=Level(0))
    out = stream(rx, clock, 10)
    assert out == [(round(k * FRAME_S, 6), (k,)) for k in range(10)]
    assert rx.stats().busy_holds == 0


def test_while_busy_frames_leave_in_pairs_at_level_1_and_threes_at_level_2():
    for level, size in ((1, 2), (2, 3)):
        rx, clock, _ = make(busy_level=Level(level))
        out = stream(rx, clock, 12)
        assert [items for _, items in out] == [tuple(range(k, k + size)) for k in range(0, 12, size)]
        # Each group leaves when its last frame arrives: the first frame waited (size - 1) frames.
        assert [t for t, _ in out] == [round((k + size - 1) * FRAME_S, 6) for k in range(0, 12, size)]
        assert rx.stats().busy_holds == 12 // size
        assert rx.stats().frames_out == 12


def test_a_busy_hold_ends_after_level_x_20_ms_plus_grace_when_no_frame_comes():
    rx, clock, _ = make(busy_level=Level(2))
    rx.offer("a", 0.0)
    action = rx.next_action(0.0)
    assert action.kind is ActionKind.WAIT and action.wait_s == pytest.approx(0.045)
    assert rx.holding
    assert rx.next_action(0.044).kind is ActionKind.WAIT
    assert rx.next_action(0.045).items == ("a",)
    rx.on_release_result(True, 0.045)
    assert not rx.holding and rx.idle


def test_a_busy_hold_never_makes_a_chunk_longer_than_batch_ms_wait():
    # batch_ms 40 at level 2: the target is 40 ms (two frames) and the hold one frame.
    rx, clock, _ = make(busy_level=Level(2), batch_ms=40)
    out = stream(rx, clock, 4)
    assert [items for _, items in out] == [(0, 1), (2, 3)]
    # batch_ms 20: nothing may be merged, so nothing waits.
    rx, clock, _ = make(busy_level=Level(2), batch_ms=20)
    assert stream(rx, clock, 3) == [(0.0, (0,)), (0.02, (1,)), (0.04, (2,))]


def test_a_long_chunk_is_not_held_while_busy():
    # Pipecat's 16 kHz pipelines hand Twilio audio on in ~95 ms chunks: already longer than a batch.
    rx, _, _ = make(busy_level=Level(2))
    rx.offer("long", 0.0, duration_s=0.095)
    assert rx.next_action(0.0).items == ("long",)


def test_nothing_is_held_for_a_passenger_a_refusal_or_in_drain():
    level = Level(1)
    rx, _, _ = make(busy_level=level)
    rx.offer("a", 0.0)
    rx.add_passenger("P")
    assert rx.next_action(0.0).items == ("a",)  # the passenger must not wait for the next frame
    rx.on_release_result(True, 0.0)
    assert rx.next_action(0.0).item == "P"
    # A refused chunk is retried on its own schedule, not held on top of it: refused while idle,
    # retried after the process turned busy, it goes at the retry (a hold would keep it 45 ms).
    level.value = 0
    rx.offer("b", 0.100)
    assert rx.next_action(0.100).items == ("b",)
    rx.on_release_result(False, 0.100)
    level.value = 2
    action = rx.next_action(0.101)
    assert action.kind is ActionKind.WAIT and action.wait_s == pytest.approx(0.004)
    assert rx.next_action(0.105).items == ("b",)
    rx.on_release_result(True, 0.105)
    # Drain releases back-to-back, merged while busy.
    rx, _, _ = make(busy_level=Level(1), high_watermark=5, low_watermark=1, max_queue=10)
    for k in range(6):
        rx.offer(k, 0.0)
    assert rx.mode is RxMode.DRAIN
    assert rx.next_action(0.0).items == (0, 1, 2)  # up to batch_ms at once, no wait


def test_the_busy_level_is_read_at_each_step():
    level = Level(1)
    rx, _, _ = make(busy_level=level)
    rx.offer("a", 0.0)
    assert rx.next_action(0.0).kind is ActionKind.WAIT
    level.value = 0  # the process is idle again: what was held goes now
    assert rx.next_action(0.001).items == ("a",)


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
    rx, _, _ = make()
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
    rx, clock, lines = make()
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
        ({"retry_interval_ms": 0}, "retry_interval_ms=0"),
        ({"telemetry_interval_s": 0}, "telemetry_interval_s=0"),
        ({"lead_ms": -1}, "lead_ms=-1"),
        ({"batch_ms": 0}, "batch_ms=0"),
        ({"flush_timeout_s": -0.5}, "flush_timeout_s=-0.5"),
    ]
    + [
        ({name: bad}, f"{name}={bad!r}")
        for name in ("max_queue", "high_watermark", "low_watermark", "frame_interval_ms", "lead_ms", "batch_ms",
                     "retry_interval_ms", "telemetry_interval_s", "flush_timeout_s")
        for bad in (float("nan"), float("inf"))
    ],
)
def test_bad_parameters_raise_value_error_naming_them(kw, needle):
    with pytest.raises(ValueError) as err:
        RxBackpressure(**kw)
    assert needle in str(err.value)


@pytest.mark.parametrize(
    "kw,needle",
    [
        ({"lead_ms": float("nan")}, "lead_ms"),
        ({"batch_ms": float("inf")}, "batch_ms"),
        ({"retry_interval_ms": -5.0}, "retry_interval_ms"),
        ({"flush_timeout_s": float("nan")}, "flush_timeout_s"),
        ({"catchup_speed": 0.5}, "catchup_speed=0.5"),
        ({"catchup_speed": float("nan")}, "catchup_speed"),
        ({"catchup_target": -1}, "catchup_target=-1"),
        ({"high_watermark": 120, "low_watermark": 130}, "low_watermark=130, high_watermark=120"),
        ({"high_watermark": 30, "low_watermark": 30}, "low_watermark=30, high_watermark=30"),
        ({"high_watermark": 300, "max_queue": 200}, "high_watermark"),
        ({"max_queue": 0}, "max_queue"),
        ({"low_watermark": -1}, "low_watermark"),
        ({"frame_interval_ms": 0}, "frame_interval_ms"),
        ({"flush_timeout_s": -1}, "flush_timeout_s"),
    ],
)
def test_bad_rx_drain_params_raise_value_error_naming_them(kw, needle):
    from pipecat_rxdrain import RxDrainParams

    with pytest.raises(ValueError) as err:
        RxDrainParams(**kw)
    assert needle in str(err.value)


def test_rx_drain_params_stay_backwards_compatible():
    from pipecat_rxdrain import RxDrainParams

    p = RxDrainParams(high_watermark=120, low_watermark=30)
    assert (p.max_queue, p.high_watermark, p.low_watermark, p.merge_backlog) == (200, 120, 30, False)
    with pytest.warns(DeprecationWarning, match="catchup"):
        old = RxDrainParams(catchup_target=2, catchup_speed=1.5)
    assert "catchup_speed" not in old.backpressure_kwargs()
    RxBackpressure(**old.backpressure_kwargs())  # what the processor builds from it


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


def test_memory_stays_bounded_over_a_long_idle_queue_call():
    # An hour at 50 fps with every frame released inline: the rate window holds one second of chunks.
    rx, _, _ = make()
    for k in range(180_000):
        now = k * FRAME_S
        rx.offer(k, now)
        rx.next_action(now)
        rx.on_release_result(True, now)
    assert len(rx._recent) <= 51 and rx.queued_chunks == 0
    assert len(rx._arrivals._times) <= 51
