"""Prometheus metrics: the recorder against real stats objects, the /metrics endpoint over real HTTP,
and multiprocess mode with two real worker processes and one collector."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from tests.helpers.loopback_server import UvicornThread
from prometheus_client.parser import text_string_to_metric_families

from pipecat_rxdrain.testing import FakeClock
from pipecat_rxdrain.metrics import (
    MetricsConfigError,
    MetricsEndpoint,
    RxdrainMetrics,
    build_registry,
    mark_process_dead,
    multiprocess_dir,
)
from pipecat_rxdrain.rx.backpressure import RxBackpressure, RxStats
from pipecat_rxdrain.stt.session import STTStats

REPO = Path(__file__).resolve().parents[2]
TOKEN = "metrics-token-0123456789abcdef"


def make_stats(cls, **values):
    """An instance of a stats dataclass with every field not given set to a zero of its type."""
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in values:
            kwargs[f.name] = values.pop(f.name)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            kind = str(f.type)
            kwargs[f.name] = "" if kind == "str" else None if "None" in kind else 0.0 if "float" in kind else 0
    assert not values, f"{cls.__name__} has no field(s) {sorted(values)}"
    return cls(**kwargs)


def samples(registry) -> dict[tuple[str, tuple], float]:
    """Every sample as {(name, sorted labels): value}, read back through the text format and its parser."""
    from prometheus_client import generate_latest

    return parse(generate_latest(registry).decode())


def parse(text: str) -> dict[tuple[str, tuple], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(snap, name, **labels) -> float:
    return snap.get((name, tuple(sorted(labels.items()))), 0.0)


# ----------------------------------------------------------------------------- recorder


def test_real_rx_queue_overflow_shows_as_queue_drops_and_drain():
    clock = FakeClock(0.0)
    rx = RxBackpressure(max_queue=10, high_watermark=6, low_watermark=2, clock=clock, emit=lambda line: None)
    metrics = RxdrainMetrics()
    call = metrics.start_call()
    for i in range(15):  # nothing released: the queue fills, drains, then drops the oldest
        rx.offer(i, clock.now)
        clock.advance(0.02)
    stats = rx.stats(clock.now)
    assert stats.drops > 0 and stats.q > 0  # precondition: the real mechanism did drop
    call.observe(rx=stats)
    snap = samples(metrics.registry)
    assert value(snap, "rxdrain_rx_queue_frames") == stats.q
    assert value(snap, "rxdrain_rx_dropped_frames_total") == stats.drops
    assert value(snap, "rxdrain_discarded_total", stage="rx", reason="overflow") == stats.drops
    assert value(snap, "rxdrain_rx_frames_in_total") == stats.frames_in == 15
    assert value(snap, "rxdrain_rx_calls_draining") == (1.0 if str(getattr(stats.mode, "value", stats.mode)) == "drain" else 0.0)
    assert value(snap, "rxdrain_rx_drain_episodes_total") == stats.drain_episodes >= 1
    assert value(snap, "rxdrain_rx_drain_seconds_total") == pytest.approx(stats.time_in_drain_s)


def test_counters_take_deltas_and_gauges_sum_over_calls():
    metrics = RxdrainMetrics()
    a, b = metrics.start_call(), metrics.start_call()
    a.observe(rx=make_stats(RxStats, mode="normal", q=3, drops=1, time_in_drain_s=0.5, drain_episodes=1))
    a.observe(rx=make_stats(RxStats, mode="normal", q=3, drops=1, time_in_drain_s=0.5, drain_episodes=1))  # same again
    b.observe(rx=make_stats(RxStats, mode="drain", q=40, drops=4, time_in_drain_s=2.0, drain_episodes=2))
    snap = samples(metrics.registry)
    assert value(snap, "rxdrain_active_calls") == 2
    assert value(snap, "rxdrain_rx_queue_frames") == 43
    assert value(snap, "rxdrain_rx_calls_draining") == 1
    assert value(snap, "rxdrain_rx_dropped_frames_total") == 5  # not 6: a repeated snapshot adds nothing
    assert value(snap, "rxdrain_rx_drain_seconds_total") == pytest.approx(2.5)
    assert value(snap, "rxdrain_rx_drain_episodes_total") == 3

    b.observe(rx=make_stats(RxStats, mode="normal", q=10, drops=7, time_in_drain_s=2.25, drain_episodes=2))
    b.end("caller disconnected")
    b.end("caller disconnected")  # idempotent
    b.observe(rx=make_stats(RxStats, mode="drain", q=99, drops=99))  # after end: ignored
    a.end("stop")
    snap = samples(metrics.registry)
    assert value(snap, "rxdrain_active_calls") == 0
    assert value(snap, "rxdrain_rx_queue_frames") == 0
    assert value(snap, "rxdrain_rx_calls_draining") == 0
    assert value(snap, "rxdrain_rx_dropped_frames_total") == 8
    assert value(snap, "rxdrain_calls_started_total") == 2
    assert value(snap, "rxdrain_calls_ended_total", reason="caller_disconnected") == 1
    assert value(snap, "rxdrain_calls_ended_total", reason="stop") == 1


def test_stt_snapshot_mapping():
    metrics = RxdrainMetrics()
    call = metrics.start_call()
    call.observe(stt=make_stats(STTStats, q=12, drops=2, requests_sent=10, write_ms=3.0, reconnects=0, replayed_ms=0.0))
    call.observe(stt=make_stats(
        STTStats, q=5, drops=6, requests_sent=20, write_ms=120.0, reconnects=2, replayed_ms=1500.0,
        replay_overflow_ms=250.0, last_error="UNAVAILABLE: connection reset", rejected=1, malformed=2, discarded_on_error=3,
    ))
    call.observe(stt=make_stats(STTStats, q=5, drops=6, requests_sent=20, write_ms=120.0, reconnects=3,
                                replayed_ms=1500.0, last_error="not a status"))
    snap = samples(metrics.registry)
    assert value(snap, "rxdrain_stt_queue_chunks") == 5
    assert value(snap, "rxdrain_stt_dropped_chunks_total") == 6
    assert value(snap, "rxdrain_discarded_total", stage="stt", reason="overflow") == 6
    assert value(snap, "rxdrain_discarded_total", stage="stt", reason="rejected") == 1
    assert value(snap, "rxdrain_discarded_total", stage="stt", reason="malformed") == 2
    assert value(snap, "rxdrain_discarded_total", stage="stt", reason="error") == 3
    # one sample per observation in which requests were sent (the third sent none)
    assert value(snap, "rxdrain_stt_write_seconds_count") == 2
    assert value(snap, "rxdrain_stt_write_seconds_sum") == pytest.approx(0.123)
    assert value(snap, "rxdrain_stt_write_seconds_bucket", le="0.005") == 1
    assert value(snap, "rxdrain_stt_reconnects_total", code="UNAVAILABLE") == 2
    assert value(snap, "rxdrain_stt_reconnects_total", code="OTHER") == 1
    assert value(snap, "rxdrain_stt_replayed_audio_seconds_total") == pytest.approx(1.5)
    assert value(snap, "rxdrain_stt_replay_overflow_audio_seconds_total") == pytest.approx(0.25)
    call.end("stop")
    assert value(samples(metrics.registry), "rxdrain_stt_queue_chunks") == 0


def test_reconnects_by_code_used_when_the_stats_have_it_and_new_discard_fields_are_found():
    metrics = RxdrainMetrics()
    call = metrics.start_call()
    call.observe(stt={"reconnects": 5, "reconnects_by_code": {"UNAVAILABLE": 3, "ABORTED": 2}, "discarded_on_close": 4})
    call.observe(stt={"reconnects": 6, "reconnects_by_code": {"UNAVAILABLE": 4, "ABORTED": 2}, "discarded_on_close": 4})
    call.observe(rx={"discarded_on_resync": 2})
    snap = samples(metrics.registry)
    assert value(snap, "rxdrain_stt_reconnects_total", code="UNAVAILABLE") == 4
    assert value(snap, "rxdrain_stt_reconnects_total", code="ABORTED") == 2
    assert value(snap, "rxdrain_discarded_total", stage="stt", reason="close") == 4
    assert value(snap, "rxdrain_discarded_total", stage="rx", reason="resync") == 2


def test_a_counter_that_restarts_counts_from_zero():
    metrics = RxdrainMetrics()
    call = metrics.start_call()
    call.observe(stt={"drops": 10})
    call.observe(stt={"drops": 3})  # a new STT session object: its counters start over
    assert value(samples(metrics.registry), "rxdrain_stt_dropped_chunks_total") == 13


def test_twilio_drops_finals_and_end_reason_labels():
    from pipecat_rxdrain.twilio.messages import DropReason, TwilioStreamParser

    parser = TwilioStreamParser()
    for raw in ("{not json", b"\x00binary", '{"event": "media"}', "[1]"):
        parser.feed(raw)
    assert parser.stats.dropped_total == 4  # precondition: the real parser counted them
    metrics = RxdrainMetrics()
    call = metrics.start_call()
    finals = [{"text": "a", "eos_to_final_ms": 350}, {"text": "b", "eos_to_final_ms": None}]
    call.observe(twilio=parser.stats, finals=finals)
    finals.append({"text": "c", "eos_to_final_ms": 1200})
    call.observe(twilio=parser.stats, finals=finals)
    snap = samples(metrics.registry)
    for reason, n in parser.stats.dropped.items():
        assert value(snap, "rxdrain_twilio_bad_messages_total", reason=reason.value) == n
        assert value(snap, "rxdrain_discarded_total", stage="twilio", reason=reason.value) == n
    assert value(snap, "rxdrain_twilio_bad_messages_total", reason=DropReason.NOT_JSON.value) == 1
    assert value(snap, "rxdrain_eos_to_final_seconds_count") == 2
    assert value(snap, "rxdrain_eos_to_final_seconds_sum") == pytest.approx(1.55)

    assert metrics.end_reason_label("Media idle timeout!") == "media_idle_timeout"
    assert metrics.end_reason_label("") == "unknown"
    for i in range(RxdrainMetrics.MAX_END_REASONS + 5):
        metrics.end_reason_label(f"reason {i}")
    assert metrics.end_reason_label("yet another") == "other"  # bounded label set
    assert metrics.end_reason_label("media idle timeout") == "media_idle_timeout"  # known ones still map


def test_multiprocess_settings_fail_clearly(tmp_path):
    assert multiprocess_dir({}) is None
    with pytest.raises(MetricsConfigError, match="PROMETHEUS_MULTIPROC_DIR"):
        multiprocess_dir({"PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "missing")})
    # set, but after prometheus-client was imported (as in this test process): values would stay private
    with pytest.raises(MetricsConfigError, match="before the process starts"):
        RxdrainMetrics(env={"PROMETHEUS_MULTIPROC_DIR": str(tmp_path)})


# ----------------------------------------------------------------------------- endpoint


def get(url: str, token: str | None = None, method: str = "GET") -> tuple[int, dict, str]:
    request = urllib.request.Request(url, method=method)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, {k.lower(): v for k, v in response.headers.items()}, response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read().decode()


def test_endpoint_over_real_http_with_bearer_token():
    metrics = RxdrainMetrics()
    call = metrics.start_call()
    call.observe(rx=make_stats(RxStats, mode="drain", q=7, drops=3))
    with UvicornThread(MetricsEndpoint(metrics.registry, TOKEN)) as server:
        status, headers, body = get(f"{server.url}/metrics", TOKEN)
        assert status == 200
        assert headers["content-type"].startswith("text/plain; version=")
        snap = parse(body)  # prometheus-client's own parser reads it
        assert value(snap, "rxdrain_active_calls") == 1
        assert value(snap, "rxdrain_rx_queue_frames") == 7
        assert value(snap, "rxdrain_rx_dropped_frames_total") == 3

        assert get(f"{server.url}/metrics")[0] == 401
        status, headers, body = get(f"{server.url}/metrics", TOKEN[:-1] + "x")
        assert status == 401 and headers.get("www-authenticate", "").startswith("Bearer")
        assert TOKEN not in body
        assert get(f"{server.url}/metrics", TOKEN.upper())[0] == 401
        assert get(f"{server.url}/metrics", TOKEN, method="POST")[0] == 405
        status, _, body = get(f"{server.url}/metrics", TOKEN, method="HEAD")
        assert status == 200 and body == ""
    call.end("stop")


def test_endpoint_is_off_without_a_token_and_refuses_a_short_one():
    metrics = RxdrainMetrics()
    with UvicornThread(MetricsEndpoint(metrics.registry, None)) as server:
        assert get(f"{server.url}/metrics", TOKEN)[0] == 404
        assert get(f"{server.url}/metrics")[0] == 404
    with pytest.raises(MetricsConfigError, match="METRICS_TOKEN") as e:
        MetricsEndpoint(metrics.registry, "short-secret")
    assert "short-secret" not in str(e.value)
    assert "enabled=True" in repr(MetricsEndpoint.from_env(metrics.registry, {"METRICS_TOKEN": TOKEN}))
    assert TOKEN not in repr(MetricsEndpoint(metrics.registry, TOKEN))


def test_endpoint_mounted_on_a_fastapi_app():
    from fastapi import FastAPI

    metrics = RxdrainMetrics()
    app = FastAPI()
    app.add_route("/metrics", MetricsEndpoint(metrics.registry, TOKEN), methods=["GET", "HEAD"])

    @app.get("/healthz")
    async def healthz():
        return {"ok": True}

    with UvicornThread(app) as server:
        assert get(f"{server.url}/healthz")[0] == 200
        status, _, body = get(f"{server.url}/metrics", TOKEN)
        assert status == 200 and ("rxdrain_active_calls", ()) in parse(body)
        assert get(f"{server.url}/metrics")[0] == 401


# ----------------------------------------------------------------------------- multiprocess

WORKER = textwrap.dedent(
    """
    import json, os, sys
    from pipecat_rxdrain.metrics import RxdrainMetrics, process_metrics
    metrics = process_metrics()
    assert metrics.multiprocess_dir == os.environ["PROMETHEUS_MULTIPROC_DIR"]
    spec = json.loads(sys.argv[1])
    calls = []
    for drops, q in spec["calls"]:
        call = metrics.start_call()
        call.observe(rx={"mode": "drain", "q": q, "drops": drops}, stt={"q": 1, "requests_sent": 1, "write_ms": 2.0},
                     finals=[{"eos_to_final_ms": 400}])
        calls.append(call)
    for call in calls[: spec["end"]]:
        call.end("stop")
    print(os.getpid(), flush=True)
    """
)


def run_worker(directory: Path, calls: list[tuple[int, int]], end: int) -> int:
    env = {k: v for k, v in os.environ.items() if k.lower() != "prometheus_multiproc_dir"}
    env["PROMETHEUS_MULTIPROC_DIR"] = str(directory)
    done = subprocess.run(
        [sys.executable, "-c", WORKER, json.dumps({"calls": calls, "end": end})],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return int(done.stdout.split()[-1])


def test_two_worker_processes_one_collector(tmp_path):
    directory = tmp_path / "prom"
    directory.mkdir()
    pid_a = run_worker(directory, [(2, 10), (3, 20)], end=1)  # two calls, one ended
    pid_b = run_worker(directory, [(5, 30)], end=0)  # one call still active
    assert pid_a != pid_b
    assert len(list(directory.glob("*.db"))) >= 4  # each worker wrote its own files

    registry = build_registry(str(directory))  # the collector; this process itself is not in multiprocess mode
    with UvicornThread(MetricsEndpoint(registry, TOKEN)) as server:
        status, _, body = get(f"{server.url}/metrics", TOKEN)
    assert status == 200
    snap = parse(body)
    # Both workers' files are read. Live gauges keep a dead process's values until it is marked dead.
    assert value(snap, "rxdrain_active_calls") == 2
    assert value(snap, "rxdrain_rx_queue_frames") == 20 + 30
    assert value(snap, "rxdrain_rx_dropped_frames_total") == 2 + 3 + 5
    assert value(snap, "rxdrain_calls_started_total") == 3
    assert value(snap, "rxdrain_calls_ended_total", reason="stop") == 1
    assert value(snap, "rxdrain_eos_to_final_seconds_count") == 3
    assert value(snap, "rxdrain_stt_write_seconds_count") == 3

    mark_process_dead(pid_b, str(directory))
    snap = samples(registry)
    assert value(snap, "rxdrain_active_calls") == 1  # worker B's live gauges are gone
    assert value(snap, "rxdrain_rx_queue_frames") == 20
    assert value(snap, "rxdrain_rx_dropped_frames_total") == 10  # counters survive their process
