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
BYTES_PER_S = 16000  # 8 kHz PCM16 (the default pipeline rate; a run at 16 kHz uses 32000)
SETUP_MARGIN_S = 1.0  # frames entering within this long after the last call started count as call setup


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


def _finals_latency(probe, streams, schedule, bytes_per_s: int = BYTES_PER_S) -> list[float]:
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
            pos = probe.origins[s_i] + int(r.end_offset_s * bytes_per_s)
            j = min(len(probe.ledger) - 1, max(0, bisect.bisect_right(cum, pos) - 1))
            if j < 0 or not probe.ledger:
                continue
            idx = probe.caller_frame(probe.ledger[j][0])
            if 0 <= idx < len(schedule):
                out.append(r.sent_at - (probe.start_at + schedule[idx]))
    return out


def speech_end_offsets(audio_s: float) -> list[float]:
    """Audio seconds at which each utterance of the caller's audio ends (end of its last speech frame),
    by the emulator's own segmenter: the reference "end of speech" for every pipeline alike."""
    from pipecat_rxdrain.emulator.segmenter import EnergySegmenter
    from pipecat_rxdrain.twilio.audio import mulaw_decode

    from .feed import loop_frames

    pcm = mulaw_decode(b"".join(loop_frames(audio_s)) + b"\xff" * 8000)
    seg = EnergySegmenter(8000)
    events = seg.feed(np.frombuffer(pcm, dtype=np.int16)) + seg.flush()
    return [e.end_s for e in events if e.kind == "end"]


def reply_latencies(probe, schedule, ends_s: list[float]) -> list[float]:
    """Per utterance: first bot audio sent to the caller after its end of speech - the caller's send time of
    the utterance's last speech frame; only replies before the next utterance ended count (else no reply)."""
    if not probe.start_at or not schedule:
        return []
    eos = []
    for e in ends_s:
        i = min(len(schedule) - 1, max(0, int(round(e / 0.02)) - 1))
        eos.append(probe.start_at + schedule[i])
    out = []
    sent = sorted(probe.reply_audio_at)
    for k, t in enumerate(eos):
        nxt = eos[k + 1] if k + 1 < len(eos) else float("inf")
        j = bisect.bisect_right(sent, t)
        if j < len(sent) and sent[j] < nxt:
            out.append(sent[j] - t)
    return out


def expected_utterances(audio_s: float) -> int:
    """Speech segments in the caller's audio, by the emulator's own segmenter (the reference)."""
    from pipecat_rxdrain.emulator.segmenter import EnergySegmenter
    from pipecat_rxdrain.twilio.audio import mulaw_decode

    from .feed import loop_frames

    pcm = mulaw_decode(b"".join(loop_frames(audio_s)) + b"\xff" * 8000)
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


def stream_leads(streams, bytes_per_s: int) -> list[float]:
    """Per stream, the max lead (s) of audio received over wall time since the stream opened.

    lead after chunk k = (audio bytes received up to k) / bytes_per_s - (received_at(k) - started_at).
    Positive = the client sent audio faster than real time (a drained backlog or a replay).
    """
    out = []
    for st in streams:
        got, best = 0, float("-inf")
        for ch in st.chunks:
            got += ch.size
            best = max(best, got / bytes_per_s - (ch.received_at - st.started_at))
        if st.chunks:
            out.append(best)
    return out


def words_lost_vs_script(texts: list[str], script: list[str], expected: int) -> tuple[int, int, int]:
    """(words lost, utterances with no final, extra finals) of one call against the emulator's script.

    The script is positional: the n-th final of a session is ``script[n]`` (text + `` u<n>``). Every
    word of ``script[0..expected)`` not delivered in the finals of utterance n is lost; a tag past
    ``expected`` or a repeated tag is an extra final (an utterance split in two, or a duplicate).
    A final without a tag (an early final: the tag is the utterance's last word) belongs to the
    next tagged final, its catch-up: its words count for that utterance, and it is an extra final
    (a split turn), not lost words.
    """
    got: dict[int, list[str]] = {}
    extra = 0
    untagged: list[str] = []
    for t in texts:
        body, _, tag = t.rpartition(" u")
        if not tag.isdigit():
            extra += 1
            untagged.extend(t.split())
            continue
        i = int(tag)
        if i in got or i >= expected:
            extra += 1
        got.setdefault(i, []).extend(untagged + body.split())
        untagged = []
    lost = missing = 0
    for i in range(expected):
        want = script[i].rpartition(" u")[0].split() if i < len(script) else []
        have = list(got.get(i, []))
        if i not in got:
            missing += 1
        for w in want:
            if w in have:
                have.remove(w)
            else:
                lost += 1
    return lost, missing, extra


def _wire_timeline(run, t0: float) -> list[tuple[float, float]]:
    probe = run.probes[0]
    first, _ = _first_receipts(probe, run.streams)
    sched = run.schedules.get(probe.call_id, [])
    out = []
    for i, t in first.items():
        c = probe.caller_frame(i)
        if 0 <= c < len(sched):
            out.append((t - t0, (t - (probe.start_at + sched[c])) * 1e3))
    return sorted(out)


def summarize(run, expected_utts: int | None = None) -> dict[str, Any]:
    sc = run.scenario
    ages, wire, all_first, notes = [], [], 0, list(run.notes)
    age_timeline: list[tuple[float, float]] = []
    frames_in = media_in = 0
    finals_lat: list[float] = []
    delivered_finals = 0
    extra = missing = 0
    words_lost = words_dup = 0
    enqueue_us, push_us, write_ms = [], [], []
    before_stt, after_stt = [], []
    rx_drops = stt_drops = reconnects = 0
    drain_s = 0.0
    rx_frames_out = rx_releases = 0
    rate = getattr(sc, "pipeline_rate", 8000)
    bytes_per_s = 2 * rate
    script = getattr(run, "script", None) or []
    steady_from = getattr(run, "setup_end", 0.0) + SETUP_MARGIN_S
    ages_setup, ages_steady = [], []
    reply_lat: list[float] = []
    replies_expected = 0
    for probe in run.probes:
        first, n = _first_receipts(probe, run.streams)
        notes += n
        frames_in += len(probe.stamps)
        media_in += probe.media_in
        all_first += len(first)
        sched = run.schedules.get(probe.call_id, [])
        for idx, t in first.items():
            if idx < len(probe.stamps):
                a = t - probe.stamps[idx]
                ages.append(a)
                (ages_steady if probe.stamps[idx] >= steady_from else ages_setup).append(a)
                age_timeline.append((t, a))
                at = probe.stt_at.get(idx)
                if at is not None:
                    before_stt.append((at - probe.stamps[idx]) * 1e3)
                    after_stt.append((t - at) * 1e3)
            c = probe.caller_frame(idx)
            if 0 <= c < len(sched) and probe.start_at:
                wire.append(t - (probe.start_at + sched[c]))
        finals_lat += _finals_latency(probe, run.streams, sched, bytes_per_s)
        if getattr(sc, "reply", False):
            ends = speech_end_offsets(sc.audio_s)
            replies_expected += len(ends)
            reply_lat += reply_latencies(probe, sched, ends)
        texts = [t for _, t in probe.finals]
        delivered_finals += len(texts)
        words_dup += sum(len(t.rsplit(" u", 1)[0].split()) for t in texts) - sum(
            len(t.rsplit(" u", 1)[0].split()) for t in {x: None for x in texts}
        )
        if expected_utts is not None and script:
            lost, miss, ext = words_lost_vs_script(texts, script, expected_utts)
            words_lost += lost
            missing += miss
            extra += ext
        enqueue_us += probe.enqueue_us
        push_us += probe.push_audio_us
        write_ms += probe.write_ms
        rx_drops += probe.rx_drops
        stt_drops += probe.stt_drops
        reconnects += max(0, len(probe.origins) - 1)
        drain_s += probe.time_in_drain_s
        rx_frames_out += probe.rx_frames_out
        rx_releases += probe.rx_releases

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
    leads = stream_leads(run.streams, bytes_per_s)
    emu_cpu = getattr(run, "emulator_cpu_s", float("nan"))
    cpu_pct = 100.0 * run.cpu_s / max(run.wall_s, 1e-9) / n_calls
    wms = [a * 1e3 for a in wire]
    return {
        "scenario": sc.key,
        "title": sc.title,
        "group": sc.group,
        "plot": sc.plot,
        "pipeline": run.pipeline,
        "calls": n_calls,
        "frames_in": frames_in,
        "media_in": media_in,
        "frames_read": all_first,
        "frames_lost": frames_in - all_first,
        "age_p50_ms": pct(ms, 50),
        "age_p95_ms": pct(ms, 95),
        "age_p99_ms": pct(ms, 99),
        "age_max_ms": max(ms) if ms else float("nan"),
        "age_p99_steady_ms": pct([a * 1e3 for a in ages_steady], 99),
        "age_p99_setup_ms": pct([a * 1e3 for a in ages_setup], 99),
        "lead_max_ms": max(leads) * 1e3 if leads else float("nan"),
        "lead_p50_ms": pct([x * 1e3 for x in leads], 50),
        "wire_age_p99_ms": pct(wms, 99),
        "age_to_stt_p50_ms": pct(before_stt, 50),
        "age_to_stt_p99_ms": pct(before_stt, 99),
        "age_stt_to_server_p50_ms": pct(after_stt, 50),
        "age_stt_to_server_p99_ms": pct(after_stt, 99),
        "wire_age_max_ms": max(wms) if wms else float("nan"),
        # RX (and STT) audio amounts are 20 ms-frame equivalents, floats since the audio-time rules.
        "peak_rx_q": round(peak_rx),
        "peak_stt_q": round(peak_stt),
        "peak_buffered_kb": (peak_rx + peak_stt) * 320 / 1024,
        "rx_drops": round(rx_drops),
        "stt_drops": round(stt_drops),
        "drops": round(rx_drops + stt_drops),
        "time_in_drain_s": drain_s if run.pipeline == "ours" else float("nan"),
        "rx_frames_per_push": rx_frames_out / rx_releases if rx_releases else float("nan"),
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
        "reply_p50_ms": pct([x * 1e3 for x in reply_lat], 50),
        "reply_max_ms": max(reply_lat) * 1e3 if reply_lat else float("nan"),
        "replies": f"{len(reply_lat)}/{replies_expected}" if replies_expected else None,
        "finals_delivered": delivered_finals,
        "finals_expected": (expected_utts or 0) * n_calls if expected_utts is not None else None,
        "finals_missing": missing,
        "finals_extra": extra,
        "words_lost": words_lost,
        "words_dup": words_dup,
        "reconnects": reconnects,
        "cpu_pct_per_call": cpu_pct,
        "calls_per_core": 100.0 / cpu_pct if cpu_pct > 0 else float("nan"),
        "emulator_cpu_pct_per_call": 100.0 * emu_cpu / max(run.wall_s, 1e-9) / n_calls,
        "timing": getattr(run, "timing", "fast"),
        "pipeline_rate": rate,
        "profile": dict(getattr(run, "profile", {}) or {}),
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
