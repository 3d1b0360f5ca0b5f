"""The shared telemetry helpers and the real clock (pipecat_rxdrain.telemetry / .clock); FakeClock: test_testing.py."""

from __future__ import annotations

import threading

import pytest

from pipecat_rxdrain.clock import monotonic
from pipecat_rxdrain.telemetry import (
    RX_LINE_RE,
    STT_LINE_RE,
    TelemetryWindow,
    format_rx_line,
    format_stt_line,
)
from pipecat_rxdrain.testing import FakeClock


def test_rx_line_exact_shape():
    line = format_rx_line(mode="drain", fps_in=57, q=200, drops=557, write_ms=1234.5678)
    assert line == "[RX] mode=drain fps_in=57 q=200 drops=557 write_ms=1234.57"
    m = RX_LINE_RE.match(line)
    assert m and m.group("mode", "fps_in", "q", "drops", "write_ms") == ("drain", "57", "200", "557", "1234.57")


def test_stt_line_exact_shape():
    line = format_stt_line(q=3, drops=0, write_ms=0.0)
    assert line == "[STT] q=3 drops=0 write_ms=0.00"
    assert STT_LINE_RE.match(line)["q"] == "3"


@pytest.mark.parametrize(
    "bad",
    [
        "[RX] mode=fast fps_in=1 q=1 drops=0 write_ms=0.00",
        "[RX] mode=normal fps_in=1 q=1 drops=0 write_ms=0.0",
        "[RX] mode=normal fps_in=1 q=1 drops=0",
        "x [RX] mode=normal fps_in=1 q=1 drops=0 write_ms=0.00",
        "[RX] mode=normal q=1 fps_in=1 drops=0 write_ms=0.00",
    ],
)
def test_rx_regex_rejects_other_shapes(bad):
    assert RX_LINE_RE.match(bad) is None


def test_window_is_due_once_per_interval_and_clock_driven():
    clock = FakeClock(10.0)
    w = TelemetryWindow(1.0, clock=clock)
    assert not w.due()
    assert w.next_due_in() == pytest.approx(1.0)
    clock.advance(0.6)
    assert not w.due() and w.next_due_in() == pytest.approx(0.4)
    clock.advance(0.4)
    assert w.due()  # with no events at all: clock-driven
    sample = w.roll()
    assert (sample.events_per_s, sample.write_ms, sample.write_count) == (0, 0.0, 0)
    assert not w.due()
    assert w.next_due_in() == pytest.approx(1.0)


def test_window_counts_and_means():
    clock = FakeClock()
    w = TelemetryWindow(1.0, clock=clock)
    w.count(30)
    w.count()
    for s in (0.001, 0.002, 0.006):
        w.record_write(s)
    clock.advance(1.0)
    sample = w.roll()
    assert sample.events_per_s == 31
    assert sample.write_ms == pytest.approx(3.0)
    assert sample.write_count == 3
    assert sample.elapsed_s == pytest.approx(1.0)
    # The next window starts empty.
    clock.advance(1.0)
    assert w.roll().events_per_s == 0


def test_window_scales_rate_for_a_short_or_long_window():
    clock = FakeClock()
    w = TelemetryWindow(1.0, clock=clock)
    w.count(10)
    clock.advance(0.5)
    assert w.roll().events_per_s == 20
    w.count(30)
    clock.advance(2.0)
    assert w.roll().events_per_s == 15


def test_window_rejects_bad_interval():
    with pytest.raises(ValueError, match="interval"):
        TelemetryWindow(0)


def test_window_is_thread_safe():
    w = TelemetryWindow(1.0, clock=FakeClock())
    n_threads, per_thread = 4, 5000

    def work():
        for _ in range(per_thread):
            w.count()
            w.record_write(0.001)

    threads = [threading.Thread(target=work) for _ in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not any(t.is_alive() for t in threads)
    sample = w.roll(1.0)
    assert sample.events_per_s == n_threads * per_thread
    assert sample.write_count == n_threads * per_thread


def test_monotonic_clock_is_monotonic():
    a = monotonic()
    b = monotonic()
    assert b >= a
