"""Property-based tests (Hypothesis) of the RX mechanism's invariants, with a FakeClock.

A rule-based state machine drives ``RxBackpressure`` through arbitrary
interleavings of offers, releases (accepted, refused, or left in flight while
more audio arrives), passengers, clock jumps, cancels and end-of-stream
flushes, and checks after every step against a plain reference model:

* q <= max_queue, always;
* every offered frame is accounted for exactly:
  offered = released + queued + dropped + discarded_on_cancel + discarded_on_end;
* frames leave in the order they were offered (and exactly the frames the
  reference model says are still queued are queued: drop-oldest, sparing the
  frame in flight);
* mode rules: ``drain`` is entered only by an offer that makes q >= high;
  it is left only when q <= low or the queue is empty (or on cancel);
  in ``normal`` q < high, in ``drain`` q > low;
* the pacing deadline never advances on a refused frame, and a refused frame
  is the next one offered downstream;
* passengers are never dropped except by ``drop_passengers`` and keep their
  place behind the audio offered before them.
"""

from __future__ import annotations

from collections import deque

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from pipecat_rxdrain.clock import FakeClock
from pipecat_rxdrain.rx_backpressure import ActionKind, RxBackpressure


class RxMachine(RuleBasedStateMachine):
    @initialize(
        max_queue=st.integers(1, 30),
        data=st.data(),
        catchup=st.sampled_from([1.0, 1.5, 3.0]),
        flush_timeout_s=st.sampled_from([0.0, 0.05, 1.0]),
    )
    def setup(self, max_queue, data, catchup, flush_timeout_s):
        high = data.draw(st.integers(1, max_queue), label="high")
        low = data.draw(st.integers(0, high - 1), label="low")
        self.clock = FakeClock(0.0)
        self.lines: list[str] = []
        self.rx = RxBackpressure(
            max_queue=max_queue,
            high_watermark=high,
            low_watermark=low,
            catchup_speed=catchup,
            flush_timeout_s=flush_timeout_s,
            clock=self.clock,
            emit=self.lines.append,
        )
        self.high, self.low, self.cap = high, low, max_queue
        self.model: deque[int] = deque()  # audio ids the reference model says are queued, oldest first
        self.in_flight: int | None = None  # id handed out by a RELEASE not yet reported
        self.next_id = 0
        self.released: list[int] = []
        self.out: list = []  # everything handed downstream, audio ids and passengers, in order
        self.passengers_expected: deque[tuple[int, str]] = deque()  # (audio offered before it, name)
        self.dropped_model = 0
        self.cancelled_model = 0

    # -- helpers ------------------------------------------------------------

    def _check_mode_transition(self, before_mode: str, before_q: int, op: str) -> None:
        rx = self.rx
        if before_mode == "normal" and rx.mode == "drain":
            assert op == "offer", f"drain entered by {op}"
            assert rx.q >= self.high
        if before_mode == "drain" and rx.mode == "normal":
            assert op in ("release", "next_action", "cancel"), f"drain left by {op}"
            assert rx.q <= self.low or rx.q == 0

    def _pass_or_release(self, accept: bool | None) -> None:
        """Ask for the next action and carry it out. accept=None leaves a RELEASE in flight."""
        rx, clock = self.rx, self.clock
        mode, q = rx.mode, rx.q
        ended_before = rx.stats(clock.now).discarded_on_end
        action = rx.next_action(clock.now)
        self._sync_end_discard(ended_before)
        self._check_mode_transition(mode, q, "next_action")
        if action.kind is ActionKind.PASS:
            # A passenger goes only once all audio offered before it has left.
            before, name = self.passengers_expected.popleft()
            assert action.item == name
            assert not self.model or self.model[0] >= before
            self.out.append(name)
        elif action.kind is ActionKind.RELEASE:
            assert self.model and action.item == self.model[0], "released out of order"
            if accept is None:
                self.in_flight = action.item
                return
            self._report(accept)
        else:
            assert action.wait_s >= 0.0

    def _sync_end_discard(self, before: int) -> None:
        """The flush timed out inside next_action: the model drops everything still queued, counted."""
        gone = self.rx.stats(self.clock.now).discarded_on_end - before
        if gone:
            assert gone == len(self.model)
            self.model.clear()

    def _report(self, accept: bool) -> None:
        rx, clock = self.rx, self.clock
        mode, q = rx.mode, rx.q
        deadline_before = rx._deadline
        head = self.in_flight if self.in_flight is not None else (self.model[0] if self.model else None)
        rx.on_release_result(accept, clock.now)
        self._check_mode_transition(mode, q, "release")
        if head is None or not self.model or self.model[0] != head:
            self.in_flight = None
            return  # a result for a frame that was discarded meanwhile is ignored
        if accept:
            self.model.popleft()
            self.released.append(head)
            self.out.append(head)
        else:
            assert rx._deadline == deadline_before, "the pacing deadline moved on a refused frame"
            assert rx.q == q
        self.in_flight = None

    # -- rules ----------------------------------------------------------------

    @rule(n=st.integers(1, 40))
    def offer(self, n):
        rx = self.rx
        for _ in range(n):
            mode, q = rx.mode, rx.q
            fid = self.next_id
            self.next_id += 1
            dropped = rx.offer(fid, self.clock.now)
            if len(self.model) == self.cap:
                assert dropped
                self.dropped_model += 1
                if self.in_flight is not None and self.model[0] == self.in_flight and len(self.model) > 1:
                    del self.model[1]  # the frame being pushed is spared
                else:
                    self.model.popleft()
            else:
                assert not dropped
            self.model.append(fid)
            self._check_mode_transition(mode, q, "offer")
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

    @rule(dt=st.sampled_from([0.0, 0.001, 0.005, 0.02, 0.05, 0.3, 2.0]))
    def tick(self, dt):
        self.clock.advance(dt)
        self.rx.report_if_due()

    @precondition(lambda self: self.in_flight is None)
    @rule()
    def cancel(self):
        mode, q = self.rx.mode, self.rx.q
        n = self.rx.discard_backlog(self.clock.now)
        assert n == len(self.model)
        self.cancelled_model += n
        self.model.clear()
        self._check_mode_transition(mode, q, "cancel")
        assert self.rx.mode == "normal"

    @rule()
    def flush(self):
        self.rx.start_flush(self.clock.now)

    # -- invariants -----------------------------------------------------------

    @invariant()
    def check_state(self):
        rx = self.rx
        if not hasattr(self, "rx"):
            return
        s = rx.stats(self.clock.now)
        assert rx.q <= self.cap
        assert rx.q == len(self.model)
        assert [item for _, item in rx._audio] == list(self.model)
        # Exact accounting of every offered frame.
        assert s.frames_in == self.next_id
        assert s.frames_in == s.frames_out + s.q + s.drops + s.discarded_on_cancel + s.discarded_on_end
        assert s.drops == self.dropped_model
        assert s.discarded_on_cancel == self.cancelled_model
        # Order: released ids strictly increasing, and all queued ids are newer than every released one.
        assert all(a < b for a, b in zip(self.released, self.released[1:]))
        if self.released and self.model:
            assert self.model[0] > self.released[-1]
        # Mode bands.
        if rx.mode == "normal":
            assert rx.q < self.high
        else:
            assert rx.q > self.low
        # Passengers are never lost.
        assert s.passengers_in == s.passengers_out + len(self.passengers_expected)
        assert s.peak_q <= self.cap

    def teardown(self):
        if not hasattr(self, "rx"):
            return
        # Let everything left drain out (accepting), in fake time: nothing may be stuck.
        for _ in range(10_000):
            if self.in_flight is not None:
                self._report(True)
            if not self.rx.pending:
                break
            ended_before = self.rx.stats(self.clock.now).discarded_on_end
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
                self.in_flight = action.item
                self._report(True)
        assert not self.rx.pending, "the queue never drained"
        assert not self.passengers_expected
        s = self.rx.stats(self.clock.now)
        assert s.frames_in == s.frames_out + s.drops + s.discarded_on_cancel + s.discarded_on_end
        # Passengers sit exactly where they were added among the released audio.
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
)
def test_drop_oldest_is_exact_for_any_burst(cap, n):
    """A burst of n frames into an idle queue of cap c: exactly max(0, n - c) dropped, the newest c kept in order."""
    rx = RxBackpressure(max_queue=cap, high_watermark=cap, low_watermark=0, clock=FakeClock(), emit=lambda _l: None)
    dropped = sum(rx.offer(k, 0.0) for k in range(n))
    assert dropped == rx.drops == max(0, n - cap)
    assert [f for _, f in rx._audio] == list(range(max(0, n - cap), n))


@settings(max_examples=150, deadline=None)
@given(refusals=st.lists(st.integers(0, 5), min_size=1, max_size=30), interval_ms=st.sampled_from([10.0, 20.0]))
def test_refusals_never_speed_up_or_skip_the_cadence(refusals, interval_ms):
    """In normal mode the cadence is deadline based and refusals never move the deadline: whatever the
    refusals, the k-th frame is accepted no earlier than k intervals after the first, in order."""
    clock = FakeClock(0.0)
    rx = RxBackpressure(
        max_queue=200, high_watermark=200, low_watermark=0, catchup_speed=1.0,
        frame_interval_ms=interval_ms, clock=clock, emit=lambda _l: None,
    )
    for k in range(len(refusals)):
        rx.offer(k, 0.0)
    accepted_at: list[float] = []
    out = []
    pending = list(refusals)
    while rx.pending:
        action = rx.next_action(clock.now)
        if action.kind is ActionKind.WAIT:
            clock.advance(max(action.wait_s, 1e-6))
            continue
        assert action.kind is ActionKind.RELEASE
        if pending[0] > 0:
            pending[0] -= 1
            before = rx._deadline
            rx.on_release_result(False, clock.now)
            assert rx._deadline == before
            continue
        pending.pop(0)
        rx.on_release_result(True, clock.now)
        accepted_at.append(clock.now)
        out.append(action.item)
    assert out == list(range(len(refusals)))
    step = interval_ms / 1000.0
    for k, t in enumerate(accepted_at):
        assert t >= k * step - 1e-9
    # and refusals only ever delay: with no refusal at all the k-th frame goes at exactly k intervals
    if not any(refusals):
        assert all(abs(t - k * step) < 1e-9 for k, t in enumerate(accepted_at))
