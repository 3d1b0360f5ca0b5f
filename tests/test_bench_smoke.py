"""The benchmark harness must not rot: one tiny scenario through all three pipelines, well-formed numbers.

No performance thresholds here (the machine is shared and noisy); only that every
pipeline carried the call end to end and the metrics are numbers in sane ranges.
"""

from __future__ import annotations

import asyncio
import math
import threading

import pytest

from benchmarks.harness import BenchServer, Scenario, run_scenario
from benchmarks.metrics import expected_utterances, summarize
from benchmarks.pipelines import PIPELINES
from benchmarks.report import write_report

pytestmark = pytest.mark.timeout(90)


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


async def test_tiny_scenario_through_all_three_pipelines(tmp_path):
    threads_before = {t.ident for t in threading.enumerate()}
    scenario = Scenario("smoke", "Smoke: 1.5 s call", audio_s=1.5, plot=True)
    expected = expected_utterances(scenario.audio_s)
    server = BenchServer()
    url = await server.start()
    rows = []
    try:
        for pipeline in PIPELINES:
            run = await run_scenario(server, url, scenario, pipeline)
            assert run.caller_errors == [], run.caller_errors
            rows.append(summarize(run, expected))
    finally:
        await server.stop()

    assert [r["pipeline"] for r in rows] == list(PIPELINES)
    n_frames = int(round((scenario.audio_s + 1.0) / 0.02))  # speech + 1 s tail of silence
    for r in rows:
        assert r["frames_in"] == n_frames, r
        # At most the stock service's last in-flight frame may be cut at the end of the call.
        assert 0 <= r["frames_lost"] <= 2, r
        assert r["frames_read"] == r["frames_in"] - r["frames_lost"]
        for key in ("age_p50_ms", "age_p99_ms", "age_max_ms", "wire_age_p99_ms", "loop_lag_p99_ms", "cpu_pct_per_call"):
            assert _finite(r[key]) and r[key] >= 0, (r["pipeline"], key, r[key])
        assert r["age_p50_ms"] <= r["age_p99_ms"] <= r["age_max_ms"] + 1e-9
        assert r["age_max_ms"] < 60_000
        assert _finite(r["enqueue_p99_us"]) and _finite(r["write_ms_mean"])
        assert r["drops"] >= 0 and r["finals_delivered"] >= 0
        assert r["_age_timeline"], r["pipeline"]
    ours = rows[PIPELINES.index("ours")]
    assert _finite(ours["push_audio_p99_us"]) and _finite(ours["time_in_drain_s"])

    path = write_report(rows, tmp_path, mode="quick", elapsed_s=1.0)
    text = path.read_text()
    assert "| metric | stock | blocking | ours | ours ÷ stock |" in text
    assert (tmp_path / "plots" / "smoke.png").stat().st_size > 0

    # Everything the harness started has stopped (the emulator, STT sessions, readers). grpc.aio's
    # process-wide completion-queue poller ("_poll_wrapper") lives as long as the process.
    deadline = asyncio.get_running_loop().time() + 10
    while True:
        leaked = [t for t in threading.enumerate() if t.ident not in threads_before and t.is_alive()]
        leaked = [t for t in leaked if not t.name.startswith(("asyncio_", "ThreadPoolExecutor")) and "_poll_wrapper" not in t.name]
        if not leaked or asyncio.get_running_loop().time() > deadline:
            break
        await asyncio.sleep(0.1)
    assert not leaked, [t.name for t in leaked]
