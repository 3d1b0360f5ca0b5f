"""Property-based tests (Hypothesis) of the RX mechanism's invariants, with a FakeClock.

A rule-based state machine drives ``RxBackpressure`` through arbitrary
interleavings of offers (chunks of 10, 20, 95 and 137.5 ms: what Pipecat's
Twilio serializer hands over at 8, 16 and 24 kHz), releases (accepted, refused,
or left in flight while more audio arrives), passengers, clock jumps, cancels
and end-of-stream flushes, with merging on or off, and checks after every step
against a plain reference model:

* q <= max_queue in audio time, always, except that the chunk being pushed and
  the newest chunk are never dropped to make room;
* every offered microsecond of audio is accounted for exactly:
  offered = released + queued + dropped + discarded_on_cancel + discarded_on_end;
* chunks leave in the order they were offered (and exactly the chunks the
  reference model says are still queued are queued: drop-oldest, sparing the
  chunks in flight); a merged release is consecutive chunks of one key within
  ``batch_ms``, never across a passenger;
* mode rules in audio time: ``drain`` is entered only by an offer that makes
  q >= high; it is left only when q <= low or the queue is empty (or on
  cancel); in ``normal`` q < high, in ``drain`` q > low;
* the rate bound: in ``normal`` a chunk starts only while the audio released
  under the bound is <= the time since the first chunk + lead; the bound's
  deadline advances by exactly the accepted duration, never on a refusal, and
  only ever eases (when a drain ends, or when the input is back at real time);
* work-conserving: in ``normal`` with audio queued, nothing in flight and no
  refusal pending, the next action is a release unless the bound holds it
  *and* the input is ahead of real time (more than 550 ms of audio besides the
  newest chunk offered within the last 500 ms; in particular a chunk offered
  to an idle queue is released at once);
* passengers are never dropped except by ``drop_passengers`` and keep their
  place behind the audio offered before them.
"""

from __future__ import annotations

from collections import deque

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from pipecat_rxdrain.rx.backpressure import ActionKind, RxBackpressure
from pipecat_rxdrain.testing import FakeClock

UNIT_US = 20_000
DURATIONS_US = [10_000, 20_000, 20_000, 20_000, 94_750, 137_500]


class RxMachine(RuleBasedStateMachine):
    @initialize(
        max_queue=st.integers(1, 30),
        data=st.data(),
        lead_ms=st.sampled_from([0.0, 40.0, 1000.0]),
        merge=st.booleans(),
        batch_ms=st.sampled_from([40.0, 60.0, 200.0]),
        flush_timeout_s=st.sampled_from([0.0, 0.05, 1.0]),
    )
    def setup(self, max_queue, data, lead_ms, merge, batch_ms, flush_timeout_s):
        high = data.draw(st.integers(1, max_queue), label="high")
        low = data.draw(st.integers(0, high - 1), label="low")
        self.clock = FakeClock(0.0)
        self.lines: list[str] = []
        self.busy = 0  # the busy level the mechanism reads (set_busy)
        self.rx = RxBackpressure(
            busy_level=lambda: self.busy,
            max_queue=max_queue,
            high_watermark=high,
            low_watermark=low,
            lead_ms=lead_ms,
            merge_backlog=merge,
            batch_ms=batch_ms,
            flush_timeout_s=flush_timeout_s,
            clock=self.clock,
            emit=self.lines.append,
        )
        self.high_us, self.low_us, self.cap_us = high * UNIT_US, low * UNIT_US, max_queue * UNIT_US
        self.lead_s, self.batch_us, self.merge = lead_ms / 1000, int(batch_ms * 1000), merge
        self.model: deque[tuple[int, int, int]] = deque()  # (id, duration us, key) queued, oldest first
        self.in_flight: tuple | None = None  # ids handed out by a RELEASE not yet reported
        self.in_flight_paced = False
        self.next_id = 0
        self.released: list[int] = []
        self.out: list = []  # everything handed downstream, audio ids and passengers, in order
        self.passengers_expected: deque[tuple[int, str]] = deque()  # (audio offered before it, name)
        self.offered_us = self.released_us = self.dropped_us = self.cancelled_us = self.ended_us = 0
        self.refused_pending = False
        self.offer_log: list[tuple[float, int]] = []  # (offered at, us)
        self.offered_time: dict[int, float] = {}  # id -> when it was offered

    # -- helpers ------------------------------------------------------------

    def _q_us(self) -> int:
        return sum(d for _, d, _ in self.model)

    def _check_mode_transition(self, before_mode: str, op: str) -> None:
        rx = self.rx
        if before_mode == "normal" and rx.mode == "drain":
            assert op == "offer", f"drain entered by {op}"
            assert self._q_us() >= self.high_us
        if before_mode == "drain" and rx.mode == "normal":
            # (an offer leaves drain only when a long chunk pushed out more old audio than it brought)
            assert op in ("release", "next_action", "cancel", "offer"), f"drain left by {op}"
            assert self._q_us() <= self.low_us or not self.model

    def _bound_allows(self, paced_s: float) -> bool:
        return paced_s <= (self.clock.now - self.rx.anchor) + self.lead_s + 1e-9

    def _input_ahead(self) -> bool:
        """More than 550 ms of audio besides the newest chunk offered within the last 500 ms: only then
        may the bound hold audio."""
        now = self.clock.now
        recent = [d for t, d in self.offer_log if t > now - 0.5]
        return bool(recent) and sum(recent) - recent[-1] > 550_000

    def _pass_or_release(self, accept: bool | None) -> None:
        """Ask for the next action and carry it out. accept=None leaves a RELEASE in flight."""
        rx, clock = self.rx, self.clock
        mode = rx.mode
        ended_before = rx._discarded_on_end_us
        action = rx.next_action(clock.now)
        self._sync_end_discard(ended_before)
        self._check_mode_transition(mode, "next_action")
        if action.kind is ActionKind.PASS:
            # A passenger goes only once all audio offered before it has left.
            before, name = self.passengers_expected.popleft()
            assert action.item == name
            assert not self.model or self.model[0][0] >= before
            self.out.append(name)
        elif action.kind is ActionKind.RELEASE:
            ids = tuple(action.items)
            assert ids and action.item == ids[0]
            assert [i for i, _, _ in list(self.model)[: len(ids)]] == list(ids), "released out of order"
            chunks = list(self.model)[: len(ids)]
            if len(ids) > 1:
                assert self.merge or self.busy > 0, "merged with merge_backlog off and the process idle"
                assert sum(d for _, d, _ in chunks) <= self.batch_us
                assert len({k for _, _, k in chunks}) == 1, "merged across a format change"
                if self.passengers_expected:
                    assert ids[-1] < self.passengers_expected[0][0], "merged across a passenger"
            paced = rx.mode == "normal" and not rx.flushing
            if paced:
                # The rate bound: each chunk in it starts within lead of the clock.
                start = rx.paced_audio_s
                for _, d, _ in chunks:
                    assert self._bound_allows(start), "released past the rate bound"
                    start += d / 1e6
            self.in_flight, self.in_flight_paced = ids, paced
            if accept is not None:
                self._report(accept)
        else:
            assert action.wait_s >= 0.0
            self._check_wait_is_justified()

    def _check_wait_is_justified(self) -> None:
        """Work-conserving: waiting with audio queued needs a reason."""
        rx = self.rx
        if not self.model or self.in_flight is not None:
            return
        if rx.mode == "drain" or rx.flushing:
            assert self.refused_pending, "drain / flush waited with nothing refused"
            return
        held_by_bound = not self._bound_allows(rx.paced_audio_s) and self._input_ahead()
        assert self.refused_pending or held_by_bound or self._held_by_busy(), "waited while it could release"

    def _held_by_busy(self) -> bool:
        """A busy hold may keep the head back: no passenger or refusal, less than (level + 1) x 20 ms
        queued (at most batch_ms), for at most level x 20 ms (at most batch_ms - 20) + 5 ms."""
        level = self.busy
        if level <= 0 or self.passengers_expected or self.refused_pending:
            return False
        if self._q_us() >= min(self.batch_us, (level + 1) * UNIT_US):
            return False
        hold_s = min(level * UNIT_US, max(0, self.batch_us - UNIT_US)) / 1e6 + 0.005
        return self.clock.now < self.offered_time[self.model[0][0]] + hold_s + 1e-9

    def _sync_end_discard(self, before: int) -> None:
        """The flush timed out inside next_action: the model drops everything still queued, counted."""
        gone = self.rx._discarded_on_end_us - before
        if gone:
            assert gone == self._q_us()
            self.ended_us += gone
            self.model.clear()
            self.refused_pending = False

    def _report(self, accept: bool) -> None:
        rx, clock = self.rx, self.clock
        mode = rx.mode
        paced_before = rx.paced_audio_s
        ids, self.in_flight = self.in_flight, None
        rx.on_release_result(accept, clock.now)
        if ids is None or not self.model or self.model[0][0] != ids[0]:
            assert rx.paced_audio_s == paced_before
            self._check_mode_transition(mode, "release")
            return  # a result for chunks discarded meanwhile is ignored
        if accept:
            us = 0
            for i in ids:
                fid, d, _ = self.model.popleft()
                assert fid == i
                us += d
                self.released.append(fid)
                self.out.append(fid)
            self.released_us += us
            self.refused_pending = False
            expected = paced_before + (us / 1e6 if self.in_flight_paced else 0.0)
            if rx.mode == mode:
                assert abs(rx.paced_audio_s - expected) < 1e-9, "deadline did not advance by the accepted audio"
            else:  # leaving drain may only ease the bound
                assert rx.paced_audio_s <= expected + 1e-9
        else:
            assert rx.paced_audio_s == paced_before, "the bound's deadline moved on a refused chunk"
            self.refused_pending = True
            self._model_trim(spared=0)  # the spared chunks are the oldest now: over the cap, they go
        self._check_mode_transition(mode, "release")

    def _model_trim(self, spared: int) -> bool:
        dropped = False
        while self._q_us() > self.cap_us and len(self.model) > spared + 1:
            _, d, _ = self.model[spared]
            del self.model[spared]
            self.dropped_us += d
            dropped = True
        return dropped

    # -- rules ----------------------------------------------------------------

    @rule(n=st.integers(1, 30), dur=st.sampled_from(DURATIONS_US), key=st.sampled_from([8000, 8000, 16000]))
    def offer(self, n, dur, key):
        rx = self.rx
        for _ in range(n):
            mode = rx.mode
            was_idle = rx.idle
            fid = self.next_id
            self.next_id += 1
            dropped = rx.offer(fid, self.clock.now, duration_s=dur / 1e6, key=key)
            self.offered_us += dur
            self.offer_log.append((self.clock.now, dur))
            self.offered_time[fid] = self.clock.now
            spared = len(self.in_flight) if self.in_flight is not None else 0
            self.model.append((fid, dur, key))
            assert dropped == self._model_trim(spared)
            self._check_mode_transition(mode, "offer")
            self.check_state()
            if (
                was_idle
                and rx.mode == "normal"
                and self.busy == 0
                and (self._bound_allows(rx.paced_audio_s) or not self._input_ahead())
            ):
                # Offered to an idle queue within the bound (or with the input not ahead of real
                # time, when the bound holds nothing back): released in the same step (inline).
                action = rx.next_action(self.clock.now)
                assert action.kind is ActionKind.RELEASE and action.items == (fid,)
                self.in_flight, self.in_flight_paced = (fid,), not rx.flushing
                self._report(True)
                self.check_state()

    @precondition(lambda self: self.in_flight is None)
    @rule(accept=st.booleans(), n=st.integers(1, 20))
    def step(self, accept, n):
        for _ in range(n):
            self._pass_or_release(accept)
            self.check_state()

    @precondition(lambda self: self.in_flight is None)
    @rule()
    def begin_release(self):
        self._pass_or_release(None)

    @precondition(lambda self: self.in_flight is not None)
    @rule(accept=st.booleans())
    def finish_release(self, accept):
        self._report(accept)

    @rule(name=st.text("PQ", min_size=1, max_size=3))
    def passenger(self, name):
        tag = f"{name}#{len(self.out)}:{self.next_id}:{len(self.passengers_expected)}"
        self.rx.add_passenger(tag)
        self.passengers_expected.append((self.next_id, tag))

    @rule(level=st.sampled_from([0, 0, 1, 2]))
    def set_busy(self, level):
        self.busy = level

    @rule(dt=st.sampled_from([0.0, 0.001, 0.005, 0.02, 0.05, 0.3, 2.0]))
    def tick(self, dt):
        self.clock.advance(dt)
        self.rx.report_if_due()

    @precondition(lambda self: self.in_flight is None)
    @rule()
    def cancel(self):
        mode = self.rx.mode
        n = self.rx.discard_backlog(self.clock.now)
        assert n * UNIT_US == self._q_us()
        self.cancelled_us += self._q_us()
        self.model.clear()
        self.refused_pending = False
        self._check_mode_transition(mode, "cancel")
        assert self.rx.mode == "normal"

    @rule()
    def flush(self):
        self.rx.start_flush(self.clock.now)

    # -- invariants -----------------------------------------------------------

    @invariant()
    def check_state(self):
        if not hasattr(self, "rx"):
            return
        rx = self.rx
        s = rx.stats(self.clock.now)
        q_us = self._q_us()
        assert rx._q_us == q_us
        assert [(c.item, c.us) for c in rx._audio] == [(i, d) for i, d, _ in self.model]
        spared = len(self.in_flight) if self.in_flight is not None else 0
        assert q_us <= self.cap_us or len(self.model) <= spared + 1  # only the in-flight and newest exceed it
        # Exact accounting of every offered microsecond (and the reported units agree).
        assert rx._audio_in_us == self.offered_us
        assert self.offered_us == self.released_us + q_us + self.dropped_us + self.cancelled_us + self.ended_us
        assert rx._drops_us == self.dropped_us
        assert rx._discarded_on_cancel_us == self.cancelled_us
        assert abs(s.audio_in - (s.audio_out + s.q + s.drops + s.discarded_on_cancel + s.discarded_on_end)) < 1e-6
        assert s.frames_in == self.next_id
        # Order: released ids strictly increasing, and all queued ids are newer than every released one.
        assert all(a < b for a, b in zip(self.released, self.released[1:]))
        if self.released and self.model:
            assert self.model[0][0] > self.released[-1]
        # Mode bands, in audio time.
        if rx.mode == "normal":
            assert q_us < self.high_us
        else:
            assert q_us > self.low_us
        # Passengers are never lost.
        assert s.passengers_in == s.passengers_out + len(self.passengers_expected)

    def teardown(self):
        if not hasattr(self, "rx"):
            return
        # Let everything left drain out (accepting), in fake time: nothing may be stuck. Driven as
        # RxDrainProcessor drives it: a due telemetry line is reported before asking what to do (a
        # wait the bound asks for can end exactly when the line is due: next_action then says
        # "wait 0" until the line is out).
        for _ in range(10_000):
            if self.in_flight is not None:
                self._report(True)
            if not self.rx.pending:
                break
            self.rx.report_if_due(self.clock.now)
            ended_before = self.rx._discarded_on_end_us
            action = self.rx.next_action(self.clock.now)
            self._sync_end_discard(ended_before)
            if action.kind is ActionKind.WAIT:
                self.clock.advance(max(action.wait_s, 1e-6))
                continue
            if action.kind is ActionKind.PASS:
                before, name = self.passengers_expected.popleft()
                assert action.item == name
                self.out.append(name)
            else:
                self.in_flight = tuple(action.items)
                self.in_flight_paced = self.rx.mode == "normal" and not self.rx.flushing
                self._report(True)
        assert not self.rx.pending, "the queue never drained"
        assert not self.passengers_expected
        assert self.offered_us == self.released_us + self.dropped_us + self.cancelled_us + self.ended_us
        audio = [x for x in self.out if isinstance(x, int)]
        assert audio == sorted(audio)


RxMachine.TestCase.settings = settings(
    max_examples=200, stateful_step_count=40, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
TestRxInvariants = RxMachine.TestCase


# -- a few invariants stated directly -----------------------------------------------------

from hypothesis import given  # noqa: E402


@settings(max_examples=200, deadline=None)
@given(
    cap=st.integers(1, 50),
    n=st.integers(0, 400),
    dur=st.sampled_from(DURATIONS_US),
)
def test_drop_oldest_is_exact_for_any_burst(cap, n, dur):
    """A burst of n chunks into an idle queue of cap c: the newest that fit are kept in order, the rest dropped."""
    rx = RxBackpressure(max_queue=cap, high_watermark=cap, low_watermark=0, clock=FakeClock(), emit=lambda _l: None)
    dropped = sum(rx.offer(k, 0.0, duration_s=dur / 1e6) for k in range(n))
    fit = max(1, cap * UNIT_US // dur)  # the newest chunk is always kept
    kept = min(n, fit)
    assert dropped == rx.stats(0.0).chunks_dropped == n - kept
    assert rx._drops_us == (n - kept) * dur
    assert [c.item for c in rx._audio] == list(range(n - kept, n))


@settings(max_examples=150, deadline=None)
@given(
    refusals=st.lists(st.integers(0, 5), min_size=1, max_size=5),  # <= 475 ms of audio: within the rate window
    dur_us=st.sampled_from([20_000, 94_750]),
    lead_ms=st.sampled_from([0.0, 100.0]),
)
def test_refusals_never_speed_up_or_skip_the_rate_bound(refusals, dur_us, lead_ms):
    """Refusals never move the bound's deadline: whatever the refusals, chunk k (each ``dur``) is
    accepted no earlier than anchor + k * dur - lead, in order; with no refusal exactly then (or at
    once, while within the lead): a bound, with no drift and no ratchet. (All of it is offered at
    t=0, so the input is ahead of real time for the first 500 ms, which the measured chunks fit in.)"""
    clock = FakeClock(0.0)
    rx = RxBackpressure(
        max_queue=10_000, high_watermark=10_000, low_watermark=0, lead_ms=lead_ms, clock=clock, emit=lambda _l: None
    )
    dur, lead = dur_us / 1e6, lead_ms / 1000
    n = len(refusals)
    # the measured chunks, then 2 s more at once: the input stays ahead of real time while they leave
    for k in range(n + int(2.0 / dur) + 1):
        rx.offer(k, 0.0, duration_s=dur)
    accepted_at: list[float] = []
    out = []
    pending = list(refusals)
    while pending:
        action = rx.next_action(clock.now)
        if action.kind is ActionKind.WAIT:
            clock.advance(max(action.wait_s, 1e-6))
            continue
        assert action.kind is ActionKind.RELEASE
        if pending[0] > 0:
            pending[0] -= 1
            before = rx.paced_audio_s
            rx.on_release_result(False, clock.now)
            assert rx.paced_audio_s == before
            continue
        pending.pop(0)
        rx.on_release_result(True, clock.now)
        accepted_at.append(clock.now)
        out.append(action.item)
    assert out == list(range(n))
    for k, t in enumerate(accepted_at):
        assert t >= k * dur - lead - 1e-9
    if not any(refusals):
        assert all(abs(t - max(0.0, k * dur - lead)) < 1e-6 for k, t in enumerate(accepted_at))
