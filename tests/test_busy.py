"""BusyMeter: the process's CPU share over a window, as a level with hysteresis (FakeClock, a fake CPU counter)."""

from __future__ import annotations

import pytest

from pipecat_rxdrain.busy import BusyMeter
from pipecat_rxdrain.testing import FakeClock


class Cpu:
    """A CPU-time counter the test advances by hand."""

    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def meter(**kw):
    clock, cpu = FakeClock(), Cpu()
    return BusyMeter(on_share=0.10, off_share=0.03, window_s=0.5, clock=clock, cpu=cpu, **kw), clock, cpu


def spend(clock: FakeClock, cpu: Cpu, wall_s: float, share: float) -> None:
    clock.advance(wall_s)
    cpu.t += wall_s * share


def test_idle_until_a_full_window_measured_busy():
    m, clock, cpu = meter()
    assert not m.busy()  # first call: starts the window
    spend(clock, cpu, 0.4, 0.5)
    assert not m.busy()  # window not over yet: still idle, whatever the CPU
    spend(clock, cpu, 0.1, 0.5)
    assert m.busy() and m.share == pytest.approx(0.5)


def test_hysteresis_on_at_on_share_off_below_off_share():
    m, clock, cpu = meter()
    m.busy()
    spend(clock, cpu, 0.5, 0.09)
    assert not m.busy()  # below on_share: stays idle
    spend(clock, cpu, 0.5, 0.10)
    assert m.busy()  # on at on_share
    spend(clock, cpu, 0.5, 0.04)
    assert m.busy()  # between the two: stays busy (spacing itself lowers the share)
    spend(clock, cpu, 0.5, 0.029)
    assert not m.busy()  # off below off_share
    spend(clock, cpu, 0.5, 0.05)
    assert not m.busy()  # between the two: stays idle
    assert m.switches == 2


def test_a_saturated_window_goes_to_the_top_level_at_once():
    m, clock, cpu = meter(max_level=2, saturated_share=0.6)
    m.level()
    spend(clock, cpu, 0.5, 0.59)
    assert m.level() == 1  # busy, not saturated: one step
    spend(clock, cpu, 0.5, 0.02)
    assert m.level() == 0
    spend(clock, cpu, 0.5, 0.6)
    assert m.level() == 2  # saturated: straight to the top, no window spent climbing
    with pytest.raises(ValueError, match="saturated_share"):
        BusyMeter(on_share=0.9, off_share=0.5, saturated_share=0.8)


def test_a_long_quiet_spell_brings_the_level_back_to_zero():
    m, clock, cpu = meter(max_level=2)
    m.level()
    spend(clock, cpu, 0.5, 0.5)
    assert m.level() == 1
    spend(clock, cpu, 0.5, 0.5)
    assert m.level() == 2
    spend(clock, cpu, 30.0, 0.001)  # no calls for 30 s (no audio): measured over the whole spell
    assert m.level() == 0  # the next call starts with no hold at all, not at level 1
    spend(clock, cpu, 0.5, 0.5)
    assert m.level() == 1


def test_the_level_climbs_one_step_per_busy_window_and_comes_down_one_per_idle_window():
    m, clock, cpu = meter(max_level=2)
    assert m.level() == 0
    levels = []
    for share in (0.5, 0.5, 0.5, 0.05, 0.02, 0.05, 0.02, 0.02):
        spend(clock, cpu, 0.5, share)
        levels.append(m.level())
    # busy x3: 1, 2, capped at 2; in between: stays; idle: one step down per window, floor 0
    assert levels == [1, 2, 2, 2, 1, 1, 0, 0]
    assert m.switches == 4


@pytest.mark.parametrize(
    "kw", [dict(on_share=0.02, off_share=0.03), dict(off_share=0.0), dict(window_s=0.0), dict(max_level=0)]
)
def test_bad_settings_raise(kw):
    with pytest.raises(ValueError):
        BusyMeter(**kw)


def test_the_shared_hold_rule_waits_level_frames_for_level_plus_one():
    from pipecat_rxdrain.busy import BUSY_HOLD_GRACE_S, busy_hold_s

    assert busy_hold_s(0, 20, 60) is None  # idle: nothing waits
    assert busy_hold_s(1, 20, 60) == pytest.approx(0.020 + BUSY_HOLD_GRACE_S)
    assert busy_hold_s(1, 40, 60) is None  # two frames queued: a level-1 merge is full
    assert busy_hold_s(2, 40, 60) == pytest.approx(0.040 + BUSY_HOLD_GRACE_S)
    assert busy_hold_s(2, 60, 60) is None
    # batch_ms caps both the merge and the wait (one frame less than the batch)
    assert busy_hold_s(2, 20, 40) == pytest.approx(0.020 + BUSY_HOLD_GRACE_S)
    assert busy_hold_s(2, 40, 40) is None
    assert busy_hold_s(1, 20, 20) is None  # a one-frame batch is already full
