"""The fault matrix against the emulator (real loopback gRPC): every fault, the outcome as designed.

The scenarios live in ``scripts/fault_matrix.py`` (which also writes ``docs/fault-matrix.md``
from them); here each one is run and its targets asserted: the call survives (or ends with
one clear non-retriable error), no word is lost or duplicated for retriable faults within
the queue and replay windows, every chunk is sent or counted as dropped, and no thread is
left behind.
"""

from __future__ import annotations

import importlib.util
import sys
import threading
from pathlib import Path

import grpc
import pytest

_PATH = Path(__file__).resolve().parents[2] / "scripts" / "fault_matrix.py"
_spec = importlib.util.spec_from_file_location("fault_matrix", _PATH)
fm = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("fault_matrix", fm)
_spec.loader.exec_module(fm)


@pytest.fixture(scope="module", autouse=True)
def _warm():
    fm.warm_up()


@pytest.mark.parametrize("sc", fm.SCENARIOS, ids=[s.id for s in fm.SCENARIOS])
def test_fault(sc):
    if sc.slow:
        pytest.skip("real-time row for the report; its time-compressed twin is asserted instead")
    o = fm.run_scenario(sc)
    summary = (
        f"{sc.id}: errors={[e.message for e in o.errors]} lost={o.words_lost}/{o.expected_words} dup={o.duplicates} "
        f"dropped={o.audio_dropped_ms}ms recovery={o.recovery_s:.2f}s streams={o.streams} reconnects={o.reconnects} "
        f"rotations={o.rotations} finals={o.finals}"
        + (f" detect={o.detect_s} by={o.detected_by} deaf={o.deaf_s}" if sc.freeze_s is not None else "")
    )
    print(summary)
    # Nothing left running, whatever happened.
    assert o.stt_threads_after == 0, summary
    assert o.threads_delta <= 0, (summary, [t.name for t in threading.enumerate()])
    # Every chunk pushed was either handed to gRPC or counted as dropped: no silent loss.
    assert o.accounted, summary
    if sc.expect == "error":
        assert len(o.errors) == 1, summary
        err = o.errors[0]
        assert not err.retriable and err.code == grpc.StatusCode.PERMISSION_DENIED and "PERMISSION_DENIED" in err.message
        assert o.reconnects == 0, "a non-retriable error must not be retried"
        # The rejected stream, plus at most the session's sync probe reading the real status
        # when grpc.aio reports the rejection as INTERNAL.
        assert o.streams <= 2, summary
        return
    assert o.survived, summary
    if sc.max_words_lost is not None:
        assert o.words_lost <= sc.max_words_lost, summary
    if sc.max_duplicates is not None:
        assert o.duplicates <= sc.max_duplicates, summary
    # Scenario-specific: the fault really happened, and was handled as designed.
    if sc.id == "down_at_start":
        assert o.recovery_s >= 0.4, summary  # no audio reached the server while it was down
    elif sc.id == "refused_3":
        assert o.streams >= 4 and o.reconnects >= 1, summary
    elif sc.id.startswith("abort_"):
        assert o.streams >= 2 and o.reconnects >= 1 and o.replayed_ms > 0, summary
        row = fm.markdown([o])  # the report's row says what the test saw
        assert f"| `{sc.id}` |" in row and "survives" in row and f"{o.words_lost}/{o.expected_words}" in row
    elif sc.id == "stall_1s":
        assert o.audio_dropped_ms == 0, summary
    elif sc.id in ("stall_5s", "stall_30s"):
        assert o.audio_dropped_ms > 0, summary  # beyond the queue: dropped, oldest first, and counted
        if sc.id == "stall_30s":
            # Bounded loss by design: only the audio the 4 s queue could not hold is dropped.
            stall_audio_ms = 3.0 * sc.speed * 1000
            assert o.audio_dropped_ms <= stall_audio_ms - fm.PRODUCTION_QUEUE * 20 + 2000, summary
    elif sc.id == "slow_responses":
        assert o.response_delay_s >= 0.45, summary
    elif sc.id == "duration_cuts_x3":
        assert o.reconnects >= 3 and o.streams >= 4, summary
    elif sc.id == "rotations_x3":
        assert o.rotations >= 3 and o.streams >= 4, summary
    elif sc.id.startswith("refused_") and sc.id.endswith("_midcall") or sc.id == "kill_restart_3_6s":
        # Reconnect timing is ours: deaf for about the outage, not the outage plus stacked backoffs.
        outage = 3.6 if sc.id == "kill_restart_3_6s" else float(sc.id.split("_")[1].rstrip("s"))
        assert outage <= o.recovery_s <= outage + 1.5, summary
        assert o.reconnects >= 1 and o.audio_dropped_ms == 0, summary
    elif sc.id.startswith("late_answers_"):
        assert o.response_delay_s >= float(sc.id.split("_")[2].rstrip("s")) - 0.05, summary
    elif sc.freeze_s is not None:
        # A frozen emulator process (SIGSTOP), 4x compressed. Whatever ends the frozen stream (or
        # nothing, see docs/fault-matrix.md), the caller is deaf about the freeze, no more words are
        # lost than are in the audio the queue cannot hold, and it transcribes again after SIGCONT.
        assert sc.freeze_s <= o.deaf_s <= sc.freeze_s + 2.0, (o.deaf_s, summary)
        if o.detect_s is not None:
            assert o.detect_s < sc.freeze_s, summary
            assert o.detected_by.startswith("keepalive") or o.detected_by == "write-stall watchdog", summary
            assert o.reconnects >= 1 and o.streams >= 2, summary
        if not sc.channel_options:
            # Production's options (ping timeout as short as the keep-alive timeout): keep-alive always
            # ends the dead stream during the freeze (the ping, or TCP_USER_TIMEOUT if it trips first).
            assert o.detect_s is not None and o.detected_by.startswith("keepalive"), summary
        assert o.words_lost <= o.words_lost_bound, (o.words_lost, o.words_lost_bound, summary)
        assert o.finals_after_thaw >= 1, summary
        assert o.emulator_rc == 0, "the emulator process was thawed and stopped by SIGTERM"
    elif sc.id == "emulator_restart":
        assert o.streams >= 2 and o.reconnects >= 1 and o.notes, summary
