"""Numbers from one run's raw observations (:class:`benchmarks.harness.RunData`).

Audio age of a frame = the emulator's receive time of the chunk holding it (server
``time.monotonic()``) - the time the frame entered the pipeline (stamped right after the
Twilio serializer produced it). Chunks are mapped to frames by byte offset: each emulator
stream of a call (told apart by ``x-rxdrain-session``) starts at a known position of the
call's *ledger* (frames in the order their bytes went into gRPC, drops excluded); a frame
replayed into a later stream keeps its first receive time.

``wire age`` is the same but from the moment the caller simulator sent the frame (its
schedule, anchored at the harness's receipt of Twilio's ``start``): it also counts the time
a frame waited unread in the socket while the pipeline's event loop was blocked.
"""

from __future__ import annotations

import bisect
import math
import statistics
from typing import Any

import numpy as np

LOW_WATERMARK = 20
BYTES_PER_S = 16000  # 8 kHz PCM16


def pct(values, p: float) -> float:
    if values is None or len(values) == 0:
        return float("nan")
    return float(np.percentile(np.asarray(values, dtype=float), p))


def _first_receipts(probe, streams) -> tuple[dict[int, float], list[str]]:
    notes = []
    mine = sorted((s for s in streams if s.session == probe.session_key), key=lambda s: s.id)
    cum = [0]
    for _, n in probe.ledger:
        cum.append(cum[-1] + n)
    origins = list(probe.origins)
    if len(origins) != len(mine):
        notes.append(f"{probe.call_id}: {len(mine)} emulator streams vs {len(origins)} client streams")
    first: dict[int, float] = {}
    for s_i, st in enumerate(mine):
        if s_i >= len(origins):
            break
        origin = origins[s_i]
        for ch in st.chunks:
            pos, end = origin + ch.offset, origin + ch.offset + ch.size
            j = max(0, bisect.bisect_right(cum, pos) - 1)
            while j < len(probe.ledger) and cum[j] < end:
                idx = probe.ledger[j][0]
                # A frame counts as read when the chunk holding its last byte is.
                if idx >= 0 and cum[j + 1] <= end and idx not in first:
                    first[idx] = ch.received_at
                j += 1
    return first, notes


def _finals_latency(probe, streams, schedule) -> list[float]:
    """Emulator final sent time - caller send time of the frame where the utterance's speech ended."""
    mine = sorted((s for s in streams if s.session == probe.session_key), key=lambda s: s.id)
    cum = [0]
    for _, n in probe.ledger:
        cum.append(cum[-1] + n)
    out = []
    for s_i, st in enumerate(mine):
        if s_i >= len(probe.origins):
            break
        for r in st.results:
            if r.kind != "final":
                continue
            pos = probe.origins[s_i] + int(r.end_offset_s * BYTES_PER_S)
            j = min(len(probe.ledger) - 1, max(0, bisect.bisect_right(cum, pos) - 1))
            if j < 0 or not probe.ledger:
                continue
            idx = probe.ledger[j][0]
            if 0 <= idx < len(schedule):
                out.append(r.sent_at - (probe.start_at + schedule[idx]))
    return out


def expected_utterances(audio_s: float) -> int:
    """Speech segments in the caller's audio, by the emulator's own segmenter (the reference)."""
    from pipecat_rxdrain.emulator.segmenter import EnergySegmenter
    from pipecat_rxdrain.twilio.audio import mulaw_decode

    from .harness import _loop_frames

    pcm = mulaw_decode(b"".join(_loop_frames(audio_s)) + b"\xff" * 8000)
    seg = EnergySegmenter(8000)
    events = seg.feed(np.frombuffer(pcm, dtype=np.int16)) + seg.flush()
    return sum(1 for e in events if e.kind == "end")


def _recovery(times_vals: list[tuple[float, float]], after: float, threshold: float) -> float | None:
    """Seconds after ``after`` until the value stays <= threshold for the rest of the run (None: never)."""
    pts = [(t, v) for t, v in times_vals if t >= after]
    if not pts:
        return None
    last_bad = None
    for t, v in pts:
        if v > threshold:
            last_bad = t
    if last_bad is None:
        return 0.0
    later = [t for t, _ in pts if t > last_bad]
    return (later[0] - after) if later else None


def _wire_timeline(run, t0: float) -> list[tuple[float, float]]:
    probe = run.probes[0]
    first, _ = _first_receipts(probe, run.streams)
    sched = run.schedules.get(probe.call_id, [])
    return sorted((t - t0, (t - (probe.start_at + sched[i])) * 1e3) for i, t in first.items() if i < len(sched))


def summarize(run, expected_utts: int | None = None) -> dict[str, Any]:
    sc = run.scenario
    ages, wire, all_first, notes = [], [], 0, list(run.notes)
    age_timeline: list[tuple[float, float]] = []
    frames_in = 0
    finals_lat: list[float] = []
    delivered_finals = 0
    extra = missing = 0
    words_lost = words_dup = 0
    enqueue_us, push_us, write_ms = [], [], []
    before_stt, after_stt = [], []
    rx_drops = stt_drops = reconnects = 0
    drain_s = 0.0
    for probe in run.probes:
        first, n = _first_receipts(probe, run.streams)
        notes += n
        frames_in += len(probe.stamps)
        all_first += len(first)
        sched = run.schedules.get(probe.call_id, [])
        for idx, t in first.items():
            if idx < len(probe.stamps):
                a = t - probe.stamps[idx]
                ages.append(a)
                age_timeline.append((t, a))
                at = probe.stt_at.get(idx)
                if at is not None:
                    before_stt.append((at - probe.stamps[idx]) * 1e3)
                    after_stt.append((t - at) * 1e3)
            if idx < len(sched) and probe.start_at:
                wire.append(t - (probe.start_at + sched[idx]))
        finals_lat += _finals_latency(probe, run.streams, sched)
        texts = [t for _, t in probe.finals]
        delivered_finals += len(texts)
        tags = [t.rsplit(" u", 1)[-1] for t in texts]
        uniq = set(tags)
        dup_texts = len(tags) - len(uniq)
        words_dup += sum(len(t.rsplit(" u", 1)[0].split()) for t in texts) - sum(
            len(t.rsplit(" u", 1)[0].split()) for t in {x: None for x in texts}
        )
        if expected_utts is not None:
            # The script is positional (u<n> = the session's n-th final): an index never delivered is a
            # missing utterance, an index past the expected count means an utterance was split in two.
            from pipecat_rxdrain.samples import load_sample

            segs = load_sample("call_en").segments
            got = {int(x) for x in uniq if x.isdigit()}
            lost_idx = [i for i in range(expected_utts) if i not in got]
            missing += len(lost_idx)
            extra += sum(1 for i in got if i >= expected_utts) + dup_texts
            words_lost += sum(len(segs[i % len(segs)].split()) for i in lost_idx)
        enqueue_us += probe.enqueue_us
        push_us += probe.push_audio_us
        write_ms += probe.write_ms
        rx_drops += probe.rx_drops
        stt_drops += probe.stt_drops
        reconnects += max(0, len(probe.origins) - 1)
        drain_s += probe.time_in_drain_s

    # q timelines
    peak_rx = peak_stt = 0
    q_series: list[tuple[float, float]] = []
    for cid, pts in run.q_timeline.items():
        for t, rq, sq in pts:
            peak_rx = max(peak_rx, rq or 0)
            peak_stt = max(peak_stt, sq or 0)
        if len(run.probes) == 1:
            q_series = [(t, (rq or 0) + (sq or 0)) for t, rq, sq in pts]
    t0 = run.probes[0].start_at if run.probes and run.probes[0].start_at else run.t_begin
    recover_q = recover_age = None
    fw = sc.fault_window
    if fw and len(run.probes) == 1:
        fault_end = t0 + fw[1]
        recover_q = _recovery(q_series, fault_end, LOW_WATERMARK)
        recover_age = _recovery(sorted(age_timeline), fault_end, 0.100)

    lag_ms = [x * 1e3 for _, x in run.lag]
    lag_fault = []
    if fw:
        lo, hi = t0 + fw[0], t0 + max(fw[1], fw[0] + 1.0)
        lag_fault = [x * 1e3 for t, x in run.lag if lo <= t <= hi]
    # RSS slope (MB/min) over the run
    rss_slope = float("nan")
    steady_rss = [(t, v) for t, v in run.rss if t >= run.t_begin + 3.0]  # after pipeline start-up
    if len(steady_rss) >= 6:
        ts = np.array([t for t, _ in steady_rss]) - steady_rss[0][0]
        mb = np.array([v for _, v in steady_rss]) / 2**20
        rss_slope = float(np.polyfit(ts, mb, 1)[0] * 60.0)
    rss_fault = float("nan")
    if fw and run.rss:
        lo, hi = t0 + fw[0], t0 + fw[1] + 0.5
        inside = [v for t, v in run.rss if lo <= t <= hi]
        before = [v for t, v in run.rss if t < lo]
        if inside and before:
            rss_fault = (max(inside) - before[-1]) / 2**20
    peak_threads = max((n for _, n in run.threads), default=run.threads_before)
    n_calls = max(1, len(run.probes))
    call_s = sc.audio_s + 1.0
    ms = [a * 1e3 for a in ages]
    wms = [a * 1e3 for a in wire]
    return {
        "scenario": sc.key,
        "title": sc.title,
        "group": sc.group,
        "plot": sc.plot,
        "pipeline": run.pipeline,
        "calls": n_calls,
        "frames_in": frames_in,
        "frames_read": all_first,
        "frames_lost": frames_in - all_first,
        "age_p50_ms": pct(ms, 50),
        "age_p95_ms": pct(ms, 95),
        "age_p99_ms": pct(ms, 99),
        "age_max_ms": max(ms) if ms else float("nan"),
        "wire_age_p99_ms": pct(wms, 99),
        "age_to_stt_p50_ms": pct(before_stt, 50),
        "age_to_stt_p99_ms": pct(before_stt, 99),
        "age_stt_to_server_p50_ms": pct(after_stt, 50),
        "age_stt_to_server_p99_ms": pct(after_stt, 99),
        "wire_age_max_ms": max(wms) if wms else float("nan"),
        "peak_rx_q": peak_rx,
        "peak_stt_q": peak_stt,
        "peak_buffered_kb": (peak_rx + peak_stt) * 320 / 1024,
        "rx_drops": rx_drops,
        "stt_drops": stt_drops,
        "drops": rx_drops + stt_drops,
        "time_in_drain_s": drain_s if run.pipeline == "ours" else float("nan"),
        "recover_q_s": recover_q,
        "recover_age_s": recover_age,
        "enqueue_p50_us": pct(enqueue_us, 50),
        "enqueue_p99_us": pct(enqueue_us, 99),
        "push_audio_p50_us": pct(push_us, 50) if push_us else float("nan"),
        "push_audio_p99_us": pct(push_us, 99) if push_us else float("nan"),
        "write_ms_mean": statistics.fmean(write_ms) if write_ms else float("nan"),
        "write_ms_p99": pct(write_ms, 99),
        "write_ms_max": max(write_ms) if write_ms else float("nan"),
        "loop_lag_p99_ms": pct(lag_ms, 99),
        "loop_lag_max_ms": max(lag_ms) if lag_ms else float("nan"),
        "loop_lag_fault_p99_ms": pct(lag_fault, 99) if lag_fault else float("nan"),
        "eos_final_p50_ms": pct([x * 1e3 for x in finals_lat], 50),
        "eos_final_p99_ms": pct([x * 1e3 for x in finals_lat], 99),
        "finals_delivered": delivered_finals,
        "finals_expected": (expected_utts or 0) * n_calls if expected_utts is not None else None,
        "finals_missing": missing,
        "finals_extra": extra,
        "words_lost": words_lost,
        "words_dup": words_dup,
        "reconnects": reconnects,
        "cpu_pct_per_call": 100.0 * run.cpu_s / max(run.wall_s, 1e-9) / n_calls,
        "cpu_s_per_call_min": run.cpu_s / n_calls / (call_s / 60.0),
        "rss_mb_per_min": rss_slope,
        "rss_fault_mb": rss_fault,
        "threads_per_call": (peak_threads - run.threads_before) / n_calls,
        "caller_errors": len(run.caller_errors),
        "notes": notes[:8],
        # timelines for plots (relative to the call start)
        "_t0": t0,
        "_fault": bool(fw) and len(run.probes) == 1,
        "_age_timeline": sorted((t - t0, a * 1e3) for t, a in age_timeline) if len(run.probes) == 1 else [],
        "_wire_timeline": _wire_timeline(run, t0) if len(run.probes) == 1 else [],
        "_q_timeline": [(t - t0, rq, sq) for t, rq, sq in next(iter(run.q_timeline.values()), [])]
        if len(run.probes) == 1
        else [],
        "_lag_timeline": [(t - t0, x * 1e3) for t, x in run.lag] if len(run.probes) == 1 else [],
    }


def finite(x) -> bool:
    return isinstance(x, (int, float)) and not (isinstance(x, float) and math.isnan(x))
