"""``benchmarks/RESULTS.md`` and ``benchmarks/plots/*.png`` from the rows of :func:`benchmarks.run.run_all`."""

from __future__ import annotations

import os
import platform
import time
from importlib import metadata
from pathlib import Path

from .metrics import finite

PIPES = ("stock", "blocking", "ours")

# (key, label, format, better) ; better: "low" | "high" | None
METRICS = [
    ("age_p50_ms", "audio age p50 (ms)", "{:.1f}", "low"),
    ("age_p95_ms", "audio age p95 (ms)", "{:.1f}", "low"),
    ("age_p99_ms", "audio age p99 (ms)", "{:.1f}", "low"),
    ("age_max_ms", "audio age max (ms)", "{:.1f}", "low"),
    ("age_p99_steady_ms", "audio age p99, steady state (ms) ⁵", "{:.1f}", "low"),
    ("age_p99_setup_ms", "audio age p99, during call setup (ms) ⁵", "{:.1f}", "low"),
    ("wire_age_p99_ms", "wire age p99 (ms) ¹", "{:.1f}", "low"),
    ("wire_age_max_ms", "wire age max (ms) ¹", "{:.1f}", "low"),
    ("age_to_stt_p50_ms", "… of which entry → STT step, p50 (ms)", "{:.1f}", "low"),
    ("age_to_stt_p99_ms", "… of which entry → STT step, p99 (ms)", "{:.1f}", "low"),
    ("age_stt_to_server_p50_ms", "… of which STT step → server, p50 (ms)", "{:.1f}", "low"),
    ("age_stt_to_server_p99_ms", "… of which STT step → server, p99 (ms)", "{:.1f}", "low"),
    ("frames_in", "frames in", "{:d}", None),
    ("frames_lost", "frames never read by the server", "{:d}", "low"),
    ("peak_rx_q", "peak RX q (frames)", "{:d}", None),
    ("peak_stt_q", "peak STT q (chunks)", "{:d}", None),
    ("peak_buffered_kb", "peak audio buffered (KB)", "{:.1f}", "low"),
    ("drops", "drops (RX + STT)", "{:d}", "low"),
    ("time_in_drain_s", "time in drain (s)", "{:.2f}", None),
    ("rx_frames_per_push", "frames per RX push downstream (> 1: merged while busy)", "{:.2f}", None),
    ("recover_q_s", "fault end → q ≤ 20 (s)", "{:.2f}", "low"),
    ("recover_age_s", "fault end → age < 100 ms (s)", "{:.2f}", "low"),
    ("enqueue_p50_us", "STT enqueue step p50 (µs) ²", "{:.1f}", "low"),
    ("enqueue_p99_us", "STT enqueue step p99 (µs) ²", "{:.1f}", "low"),
    ("push_audio_p99_us", "push_audio p99 (µs)", "{:.1f}", "low"),
    ("write_ms_mean", "gRPC write_ms mean", "{:.2f}", "low"),
    ("write_ms_p99", "gRPC write_ms p99", "{:.2f}", "low"),
    ("write_ms_max", "gRPC write_ms max", "{:.1f}", "low"),
    ("loop_lag_p99_ms", "event-loop lag p99 (ms)", "{:.1f}", "low"),
    ("loop_lag_max_ms", "event-loop lag max (ms)", "{:.1f}", "low"),
    ("loop_lag_fault_p99_ms", "loop lag p99 during fault (ms)", "{:.1f}", "low"),
    ("eos_final_p50_ms", "end of speech → final p50 (ms) ³", "{:.0f}", "low"),
    ("eos_final_p99_ms", "end of speech → final p99 (ms) ³", "{:.0f}", "low"),
    ("reply_p50_ms", "end of speech → first reply audio at the caller, p50 (ms) ⁷", "{:.0f}", "low"),
    ("reply_max_ms", "end of speech → first reply audio at the caller, max (ms) ⁷", "{:.0f}", "low"),
    ("replies", "utterances answered / utterances", "{}", None),
    ("finals_delivered", "finals delivered / expected", None, None),
    ("finals_missing", "utterances with no final", "{:d}", "low"),
    ("finals_extra", "extra/duplicate finals", "{:d}", "low"),
    ("words_lost", "words lost", "{:d}", "low"),
    ("reconnects", "new streams after the first (reconnects + rotations)", "{:d}", None),
    ("lead_max_ms", "max lead of audio over wall clock, per stream (ms) ⁶", "{:.0f}", None),
    ("cpu_pct_per_call", "CPU per call (% of a core) ⁴", "{:.1f}", "low"),
    ("calls_per_core", "calls per core (100 / CPU per call)", "{:.1f}", "high"),
    ("emulator_cpu_pct_per_call", "emulator CPU per call (% of a core, own process)", "{:.1f}", None),
    ("rss_mb_per_min", "RSS growth (MB/min)", "{:.1f}", "low"),
    ("rss_fault_mb", "RSS growth during fault (MB)", "{:.1f}", "low"),
    ("threads_per_call", "threads per call", "{:.1f}", None),
]


def _fmt(row, key, fmt):
    if row is None:
        return "–"
    if key == "finals_delivered":
        exp = row.get("finals_expected")
        return f"{row['finals_delivered']}/{exp}" if exp is not None else str(row["finals_delivered"])
    v = row.get(key)
    if v is None and key.startswith("recover_") and row.get("_fault"):
        return "never"
    if v is None or not finite(v):
        return "–"
    try:
        return fmt.format(v)
    except (ValueError, TypeError):
        return str(v)


def _ratio(ours, stock, key):
    if ours is None or stock is None:
        return "–"
    a, b = ours.get(key), stock.get(key)
    if not (finite(a) and finite(b)):
        return "–"
    if b == 0:
        return "=" if a == 0 else "∞"
    return f"{a / b:.2f}"


def machine() -> dict:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    pkgs = {}
    for name in ("pipecat-ai", "pipecat-rxdrain", "grpcio", "google-cloud-speech", "google-api-core", "fastapi", "uvicorn", "websockets", "numpy"):
        try:
            pkgs[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return {
        "cores": os.cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load": os.getloadavg(),
        "packages": pkgs,
    }


def _plot(scenario_key: str, title: str, rows: dict, out_dir: Path) -> str | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"stock": "tab:blue", "blocking": "tab:red", "ours": "tab:green"}
    fig, axes = plt.subplots(4, 1, figsize=(9, 11), sharex=True)
    for pipe in PIPES:
        row = rows.get(pipe)
        if not row:
            continue
        q = row.get("_q_timeline") or []
        if q:
            axes[0].plot([t for t, _, _ in q], [(a or 0) + (b or 0) for _, a, b in q], color=colors[pipe], label=f"{pipe}: RX q + STT q")
        age = row.get("_age_timeline") or []
        if age:
            axes[1].plot([t for t, _ in age], [a for _, a in age], ".", ms=2, color=colors[pipe], label=pipe)
        wire = row.get("_wire_timeline") or []
        if wire:
            axes[2].plot([t for t, _ in wire], [a for _, a in wire], ".", ms=2, color=colors[pipe], label=pipe)
        lag = row.get("_lag_timeline") or []
        if lag:
            axes[3].plot([t for t, _ in lag], [x for _, x in lag], ".", ms=3, color=colors[pipe], label=pipe)
    axes[0].axhline(20, color="grey", ls=":", lw=0.8)
    axes[0].set_ylabel("queued audio (frames/chunks)")
    axes[0].legend(fontsize=8, loc="upper left")
    for ax, label in ((axes[1], "audio age (ms)"), (axes[2], "wire age (ms), from caller send")):
        ax.set_ylabel(label)
        ax.set_yscale("symlog", linthresh=100)
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=8, loc="upper left", markerscale=4)
    axes[3].set_ylabel("event-loop lag (ms)\n(at sample start)")
    axes[3].set_xlabel("seconds since the call started (ages plotted at the server receive time)")
    axes[3].legend(fontsize=8, loc="upper left", markerscale=3)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{scenario_key}.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path.name


def _targets(by) -> list[tuple[str, str, str]]:
    """(target, measured, verdict) for the issue's targets, from whatever scenarios ran."""
    out = []

    def g(sc, pipe, key):
        r = by.get(sc, {}).get(pipe)
        return r.get(key) if r else None

    v = g("steady", "ours", "age_p99_ms")
    if v is not None:
        out.append(("Audio age p99 < 200 ms in steady state", f"{v:.1f} ms (stock {g('steady', 'stock', 'age_p99_ms'):.1f} ms)", "met" if v < 200 else "NOT met"))
    for sc in ("net_stall_2s", "net_stall_5s"):
        r = by.get(sc, {}).get("ours")
        if r:
            rec, rq, d = r.get("recover_age_s"), r.get("recover_q_s"), r.get("drops")
            ok = rec is not None and rec <= 2.0 and rq is not None and d == 0
            out.append(
                (
                    f"{sc}: age < 100 ms within 2 s after the stall, q ≤ 20, 0 drops",
                    f"age recovered in {_s(rec)}, q ≤ 20 in {_s(rq)}, drops {d}",
                    "met" if ok else "NOT met",
                )
            )
    for sc in ("server_stall_3s", "server_stall_10s"):
        r, s = by.get(sc, {}).get("ours"), by.get(sc, {}).get("stock")
        if r:
            ok = finite(r["age_max_ms"]) and r["age_max_ms"] <= 4500 and r["peak_buffered_kb"] <= 200 * 320 * 2 / 1024 + 1
            out.append(
                (
                    f"{sc}: audio age bounded by the queue (4 s at 200 frames), memory flat; stock grows",
                    f"ours age max {r['age_max_ms']:.0f} ms, buffered ≤ {r['peak_buffered_kb']:.0f} KB, drops {r['drops']}; "
                    + (f"stock age max {s['age_max_ms']:.0f} ms, buffered {s['peak_buffered_kb']:.0f} KB" if s else ""),
                    "met" if ok else "NOT met",
                )
            )
            lag_f, lag_s = r.get("loop_lag_fault_p99_ms"), g("steady", "ours", "loop_lag_p99_ms")
            if finite(lag_f) and lag_s is not None and finite(lag_s):
                out.append(
                    (
                        f"{sc}: event-loop lag during the stall no worse than steady state",
                        f"{lag_f:.1f} ms vs steady {lag_s:.1f} ms (p99)",
                        "met" if lag_f <= max(lag_s * 1.5, lag_s + 2.0) else "NOT met",
                    )
                )
    pushes = [(sc, r["ours"]["push_audio_p99_us"]) for sc, r in by.items() if r.get("ours") and finite(r["ours"].get("push_audio_p99_us"))]
    if pushes:
        worst = max(pushes, key=lambda x: x[1])
        steady = dict(pushes).get("steady")
        out.append(
            (
                "push_audio p99 < 50 µs",
                (f"steady {steady:.1f} µs; " if steady is not None else "") + f"worst scenario {worst[0]} {worst[1]:.1f} µs",
                "met" if worst[1] < 50 else ("met in steady state only" if steady is not None and steady < 50 else "NOT met"),
            )
        )
    return out


# Ours in the committed run before issue 13 (benchmarks/RESULTS.md of commit a3f0741): "no worse than today".
BASELINE_OURS = {
    "net_stall_2s": {"age_max_ms": 295.3, "recover_age_s": 0.73, "drops": 0},
    "net_stall_5s": {"age_max_ms": 300.1, "recover_age_s": 0.74, "drops": 0},
    "server_abort": {"age_max_ms": 261.9, "recover_age_s": 0.26, "words_lost": 0, "frames_lost": 0},
    "long_call": {"age_max_ms": 67.0, "words_lost": 0, "finals_extra": 0},
    "loop_hiccups": {"age_max_ms": 350.1, "loop_lag_p99_ms": 2.0},
}
# Noise allowance on a shared 2-core box: times may be 25 % + 20 ms (ages) / + 0.25 s (recoveries) worse.
_SLACK = {"age_max_ms": (1.25, 20.0), "recover_age_s": (1.25, 0.25), "loop_lag_p99_ms": (1.5, 1.0)}


def _no_worse(key: str, now, base) -> bool:
    if now is None or not finite(now):
        return False
    mul, add = _SLACK.get(key, (1.0, 0.0))
    return now <= base * mul + add


def _cap_text(cap: dict) -> str:
    return f"stock {cap.get('stock')}, blocking {cap.get('blocking')}, ours {cap.get('ours')}"


def verdicts(by, later: dict | None = None) -> list[tuple[str, str, str]]:
    """(criterion, measured, verdict) for issue 13's acceptance list, from whatever scenarios ran.

    ``later`` holds the scale ladder's later rounds (round -> rows by scenario and pipeline, as ``by``);
    a capacity verdict is met only if it is met in every round.
    """
    out = []

    def row(sc, pipe):
        return by.get(sc, {}).get(pipe)

    for sc in ("steady", "jitter", "bunches_small", "steady_16k"):
        o, st = row(sc, "ours"), row(sc, "stock")
        if o and st:
            ok = finite(o["age_p99_ms"]) and finite(st["age_p99_ms"]) and o["age_p99_ms"] <= st["age_p99_ms"] + 5.0
            out.append((f"{sc}: audio-age p99 ≤ stock + 5 ms", f"ours {o['age_p99_ms']:.1f} ms, stock {st['age_p99_ms']:.1f} ms",
                        "met" if ok else "NOT met"))
    ladders = [(1, by), *sorted((later or {}).items())]  # (round, rows of that round's ladder)
    if scale_capacity(by):
        def twice(c):
            s_, o_ = c.get("stock"), c.get("ours")
            return o_ is not None and s_ is not None and o_ >= 2 * max(s_, 1)

        def per_round(text_of) -> str:
            if len(ladders) == 1:
                return text_of(by)
            return "; ".join(f"round {k}: {text_of(b)}" for k, b in ladders)

        caps = [scale_capacity(b) for _, b in ladders]
        out.append(("capacity ≥ 2x stock's (audio-age p99 < 200 ms, 0 drops)",
                    per_round(lambda b: _cap_text(scale_capacity(b))) + f" (ladder {', '.join(map(str, caps[0]['tested']))})",
                    "met" if all(twice(c) for c in caps) else "NOT met"))
        steady = [scale_capacity(b, "age_p99_steady_ms") for _, b in ladders]
        out.append(("(not an issue verdict) the same counting steady state only (frames after the last call started + 1 s)",
                    per_round(lambda b: _cap_text(scale_capacity(b, "age_p99_steady_ms"))),
                    "met" if all(twice(c) for c in steady) else "NOT met"))
        points = []  # (round, N, push_audio p99) at each round's capacity point
        for (k, b), c in zip(ladders, caps, strict=True):
            n = c.get("ours")
            r = b.get(f"scale_{n}", {}).get("ours") if n else None
            if r is not None and finite(r.get("push_audio_p99_us")):
                points.append((k, n, r["push_audio_p99_us"]))
        if points:
            ok = "met" if all(us < 50 for _, _, us in points) else "NOT met"
            if len(ladders) == 1:
                out.append((f"push_audio p99 < 50 µs at the capacity point (N={points[0][1]})", f"{points[0][2]:.1f} µs", ok))
            else:
                out.append(("push_audio p99 < 50 µs at the capacity point",
                            "; ".join(f"round {k} (N={n}): {us:.1f} µs" for k, n, us in points), ok))
    r = row("server_stall_10s", "ours")
    if r is not None:
        over = _count_over(by, "server_stall_10s", "ours", 4500.0)
        out.append(("server_stall_10s: 0 frames older than max_queue + 0.5 s (4.5 s)", f"{over} frames; age max {r['age_max_ms']:.0f} ms",
                    "met" if over == "0" else "NOT met"))
    for sc, base in BASELINE_OURS.items():
        r = row(sc, "ours")
        if r is None:
            continue
        bad = [f"{k} {r.get(k)} > {v}" for k, v in base.items() if not _no_worse(k, r.get(k), v)]
        meas = ", ".join(f"{k} {_fmt(r, k, '{:.2f}' if isinstance(v, float) else '{:d}')} (was {v})" for k, v in base.items())
        out.append((f"{sc}: no worse than before issue 13", meas, "met" if not bad else "NOT met"))
    return out


def _s(x):
    return "never" if x is None else f"{x:.2f} s"


def scale_capacity(by, key: str = "age_p99_ms") -> dict:
    """Largest ladder N per pipeline such that it and every rung below it had ``key`` < 200 ms and 0 drops (0 if none).

    A rung passed above a failed one (the ladder climbs on while a pipeline passes in steady state, and rungs near
    the knee pass or fail run to run) does not count: the capacity is where the pipeline stops being reliable.
    """
    scale = sorted((int(k.split("_")[1]), v) for k, v in by.items() if k.startswith("scale_"))
    if not scale:
        return {}
    cap: dict = {"tested": [n for n, _ in scale]}
    for pipe in PIPES:
        best = 0
        for n, rows in scale:
            r = rows.get(pipe)
            if r is None:  # not run (the ladder stopped) or not this pipeline
                break
            if not (finite(r.get(key)) and r[key] < 200 and r["drops"] == 0):
                break
            best = n
        cap[pipe] = best
    return cap


#: measured by hand with ``python -m benchmarks.bench_workers`` (not part of ``benchmarks.run``); the part of it
#: between these markers is copied into RESULTS.md verbatim, so regenerating RESULTS.md keeps it
WORKERS_RESULTS = Path(__file__).resolve().parent / "RESULTS_workers.md"
WORKERS_BEGIN, WORKERS_END = "<!-- RESULTS.md section: begin -->", "<!-- RESULTS.md section: end -->"


def workers_section(path: Path = WORKERS_RESULTS) -> list[str]:
    """The lines of ``path`` between :data:`WORKERS_BEGIN` and :data:`WORKERS_END` (none if absent), then a blank."""
    if not path.is_file():
        return []
    text = path.read_text()
    if WORKERS_BEGIN not in text or WORKERS_END not in text:
        return []
    body = text.split(WORKERS_BEGIN, 1)[1].split(WORKERS_END, 1)[0].strip("\n")
    return [*body.splitlines(), ""]


def _by_scenario(rows) -> tuple[dict[str, dict[str, dict]], list[str]]:
    """Rows as scenario -> pipeline -> row, and the scenarios in the order they first appear."""
    by: dict[str, dict[str, dict]] = {}
    order: list[str] = []
    for r in rows:
        if r["scenario"] not in by:
            order.append(r["scenario"])
        by.setdefault(r["scenario"], {})[r["pipeline"]] = r
    return by, order


def write_report(rows: list[dict], out: Path, *, mode: str, elapsed_s: float) -> Path:
    """Write ``out/RESULTS.md`` and ``out/plots/*.png``; returns the RESULTS.md path."""
    out = Path(out)
    by, order = _by_scenario(r for r in rows if r.get("round", 1) == 1)
    later = {k: _by_scenario(r for r in rows if r.get("round") == k) for k in sorted({r.get("round", 1) for r in rows}) if k > 1}
    m = machine()
    L: list[str] = []
    L.append("# Benchmarks: stock Pipecat vs the blocking baseline vs pipecat-rxdrain")
    L.append("")
    L.append(
        f"Generated by `python -m benchmarks.run --{mode}` (`make bench{'-quick' if mode == 'quick' else ''}`) on "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; the run took {elapsed_s / 60:.1f} min."
        + (" **Quick mode: short scenarios, for iteration; the numbers are indicative only.**" if mode == "quick" else "")
    )
    L.append("")
    L.append(
        f"Machine: {m['cores']} cores, {m['cpu']}, Python {m['python']}, {m['platform']}; load average at the end "
        f"{m['load'][0]:.2f}/{m['load'][1]:.2f}/{m['load'][2]:.2f} (a shared box: other jobs ran at the same time). "
        + "Packages: " + ", ".join(f"{k} {v}" for k, v in m["packages"].items()) + "."
    )
    L.append("")
    L += _method(rows)
    targets = _targets(by)
    if targets:
        L.append("## Targets (ours)")
        L.append("")
        L.append("| target | measured | verdict |")
        L.append("|---|---|---|")
        for t, meas, verdict in targets:
            L.append(f"| {t} | {meas} | **{verdict}** |")
        L.append("")
    ver = verdicts(by, {k: b for k, (b, _) in later.items()})
    if ver:
        L.append("## Verdicts (issue 13)")
        L.append("")
        L.append("| criterion | measured | verdict |")
        L.append("|---|---|---|")
        for t, meas, verdict in ver:
            L.append(f"| {t} | {meas} | **{verdict}** |")
        L.append("")
    L += _analysis(by, {k: b for k, (b, _) in later.items()})
    L += _profile_section(by)
    cap = scale_capacity(by)
    if cap:
        L.append("## Scale: concurrent calls on this machine")
        L.append("")
        L += scale_table(by, order)
        steady_cap = scale_capacity(by, "age_p99_steady_ms")
        L.append(
            f"{'Round 1. ' if later else ''}Largest N such that it and every rung below it had audio-age p99 < 200 ms and 0 drops (ladder {', '.join(map(str, cap['tested']))}; a pipeline "
            f"stops climbing after two consecutive rungs that fail both overall and in steady state, shown as *stopped*): **stock {cap['stock']}, blocking "
            f"{cap['blocking']}, ours {cap['ours']}**. Counting steady state only (frames entering more than 1 s after "
            f"the last call started): stock {steady_cap['stock']}, blocking {steady_cap['blocking']}, ours {steady_cap['ours']}."
        )
        L.append("")
        for k, (b, b_order) in later.items():
            c, sc_ = scale_capacity(b), scale_capacity(b, "age_p99_steady_ms")
            L.append(
                f"Round {k}: the ladder again, after every other scenario, the pipelines in "
                f"{'reverse' if k % 2 == 0 else 'the same'} order (so a slow spell of this shared machine does not fall on one "
                f"pipeline's ladder only). Capacity **{_cap_text(c)}**; counting steady state only {_cap_text(sc_)}."
            )
            L.append("")
            L += scale_table(b, b_order)
    L += workers_section()
    L.append("## Per scenario")
    L.append("")
    for key in order:
        rows_ = by[key]
        any_row = next(iter(rows_.values()))
        L.append(f"### {any_row['title']} (`{key}`)")
        L.append("")
        if any_row.get("plot"):
            name = _plot(key, any_row["title"], rows_, out / "plots")
            if name:
                L.append(f"![{key}](plots/{name})")
                L.append("")
        L.append("| metric | stock | blocking | ours | ours ÷ stock |")
        L.append("|---|---|---|---|---|")
        for mkey, label, fmt, _ in METRICS:
            vals = [_fmt(rows_.get(p), mkey, fmt) for p in PIPES]
            if all(v == "–" for v in vals):
                continue
            ratio = "–" if mkey == "finals_delivered" else _ratio(rows_.get("ours"), rows_.get("stock"), mkey)
            L.append(f"| {label} | " + " | ".join(vals) + f" | {ratio} |")
        notes = [f"{p}: {n}" for p in PIPES if rows_.get(p) for n in rows_[p].get("notes", [])]
        if notes:
            L.append("")
            L.append("Notes: " + "; ".join(notes))
        L.append("")
    L += _footnotes()
    out.mkdir(parents=True, exist_ok=True)
    path = out / "RESULTS.md"
    path.write_text("\n".join(L) + "\n")
    return path


def scale_table(by, order) -> list[str]:
    L = [
        "| N | pipeline | age p99 (ms) | steady p99 (ms) | setup p99 (ms) | wire age p99 (ms) | drops | frames lost | "
        "loop lag p99 (ms) | push_audio p99 (µs) | frames per RX push | CPU/call (% core) | calls/core | "
        "emulator CPU/call (% core) | threads/call |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    keys = [k for k in order if k.startswith("scale_")]
    for key in keys:
        for pipe in PIPES:
            r = by[key].get(pipe)
            if r is None:
                if any(p == pipe for k in keys for p in by[k]):
                    L.append(f"| {key.split('_')[1]} | {pipe} | stopped | | | | | | | | | | | | |")
                continue
            L.append(
                f"| {r['calls']} | {pipe} | {_fmt(r, 'age_p99_ms', '{:.1f}')} | {_fmt(r, 'age_p99_steady_ms', '{:.1f}')} | "
                f"{_fmt(r, 'age_p99_setup_ms', '{:.1f}')} | {_fmt(r, 'wire_age_p99_ms', '{:.1f}')} | {r['drops']} | "
                f"{r['frames_lost']} | {_fmt(r, 'loop_lag_p99_ms', '{:.1f}')} | {_fmt(r, 'push_audio_p99_us', '{:.1f}')} | "
                f"{_fmt(r, 'rx_frames_per_push', '{:.2f}')} | {_fmt(r, 'cpu_pct_per_call', '{:.1f}')} | {_fmt(r, 'calls_per_core', '{:.1f}')} | "
                f"{_fmt(r, 'emulator_cpu_pct_per_call', '{:.1f}')} | {_fmt(r, 'threads_per_call', '{:.1f}')} |"
            )
    L.append("")
    return L


def _profile_section(by) -> list[str]:
    keys = [k for k, rows in by.items() if any(r.get("profile") for r in rows.values())]
    out: list[str] = []
    for key in keys:
        rows = by[key]
        stages: list[str] = []
        for pipe in PIPES:
            for st in (rows.get(pipe) or {}).get("profile", {}):
                if st not in stages:
                    stages.append(st)
        n = next(iter(rows.values()))["calls"]
        out += [
            f"## Where the CPU goes: µs per audio frame by stage (`{key}`, {n} calls)",
            "",
            "Thread CPU accounting (`psutil`, per thread over the run) plus a stack sampler on the event-loop thread "
            "(every 2 ms, attributed to the innermost frame of a known stage; see `benchmarks/profiling.py`). "
            "*loop: …* rows split the loop thread's CPU by the sampler's shares; the other rows are whole threads or "
            "processes. Per frame = per 20 ms of one call's audio; at 50 frames/s, 200 µs/frame is 1 % of a core per call.",
            "",
            "| stage | " + " | ".join(p for p in PIPES if rows.get(p)) + " |",
            "|---|" + "---|" * sum(1 for p in PIPES if rows.get(p)),
        ]
        for st in stages:
            vals = [rows[p].get("profile", {}).get(st) for p in PIPES if rows.get(p)]
            out.append(f"| {st} | " + " | ".join("–" if v is None else f"{v:.0f}" for v in vals) + " |")
        out.append("")
    return out


def _v(by, sc, pipe, key, fmt="{:.0f}"):
    r = by.get(sc, {}).get(pipe)
    if not r or r.get(key) is None or not finite(r.get(key)):
        return "n/a"
    return fmt.format(r[key])


def _count_over(by, sc, pipe, ms: float) -> str:
    r = by.get(sc, {}).get(pipe)
    if not r or not r.get("_age_timeline"):
        return "n/a"
    return str(sum(1 for _, a in r["_age_timeline"] if a > ms))


def _analysis(by, later: dict | None = None) -> list[str]:
    """What the numbers say, scenario by scenario (filled from this run)."""
    out = ["## Reading the numbers", ""]
    if "steady" in by:
        out.append(
            f"* **Steady call.** Audio age p99 stock {_v(by, 'steady', 'stock', 'age_p99_ms', '{:.1f}')} ms, ours "
            f"{_v(by, 'steady', 'ours', 'age_p99_ms', '{:.1f}')} ms. Both hand a frame on the moment it arrives: stock "
            "writes every 20 ms frame as its own request; ours releases a frame that finds the RX queue empty inline (no "
            "task hop, no timer) and its writer sends at once when idle, coalescing only what piled up while a write was "
            "in flight (up to `batch_ms`). The blocking baseline shows the production pathology: its pacer sleeps 20 ms "
            f"*after* each frame, so it runs slightly slower than real time and its queue only grows (peak RX q "
            f"{_v(by, 'steady', 'blocking', 'peak_rx_q')}, age p99 {_v(by, 'steady', 'blocking', 'age_p99_ms')} ms "
            "after 60 s; a longer call reaches q=200 and starts dropping)."
        )
    for sc in ("net_stall_2s", "net_stall_5s"):
        if sc in by:
            out.append(
                f"* **{sc}.** After the burst, stock (no pacing at all) hands every frame to gRPC at once: age max "
                f"{_v(by, sc, 'stock', 'age_max_ms')} ms. Ours drains the burst back-to-back (drain mode, yielding to the loop "
                f"between frames) into 60 ms batches: age max {_v(by, sc, 'ours', 'age_max_ms')} ms, back under 100 ms "
                f"{_v(by, sc, 'ours', 'recover_age_s', '{:.2f}')} s after the stall, drops {_v(by, sc, 'ours', 'drops')}. "
                f"The blocking baseline never catches up: peak q {_v(by, sc, 'blocking', 'peak_rx_q')}, drops "
                f"{_v(by, sc, 'blocking', 'drops')}, every later frame {_v(by, sc, 'blocking', 'age_p50_ms')} ms old at p50."
            )
    for sc in ("server_stall_3s", "server_stall_10s"):
        if sc in by:
            over = _count_over(by, sc, "ours", 4500.0)
            out.append(
                f"* **{sc}.** With small HTTP/2 windows the writer feels the stall. Stock's unbounded `asyncio.Queue` keeps "
                f"everything (age max {_v(by, sc, 'stock', 'age_max_ms')} ms, peak {_v(by, sc, 'stock', 'peak_stt_q')} frames "
                f"queued, 0 drops): backlog, memory and audio age grow with the stall, without bound. Ours keeps the audio held by "
                f"its two queues within the RX `max_queue` (200 frames = 4 s): the STT queue fills (peak "
                f"{_v(by, sc, 'ours', 'peak_stt_q')} of 200), `can_accept_audio()` turns false, and because RX q plus the STT's "
                f"`audio_backlog()` would exceed 200, RX hands frames on at once (peak RX q {_v(by, sc, 'ours', 'peak_rx_q')}) "
                f"and the STT drops its oldest (drops: RX {_v(by, sc, 'ours', 'rx_drops')}, STT {_v(by, sc, 'ours', 'stt_drops')}, "
                f"all counted). What still exceeds the bound is audio already handed to gRPC when the stall began (the batch "
                f"being written plus what even small HTTP/2 windows hold): it cannot be taken back and arrives the full stall "
                f"late. Frames older than 4.5 s: {over}; age max {_v(by, sc, 'ours', 'age_max_ms')} ms. "
                f"The event loop stays free (loop lag p99 during the stall {_v(by, sc, 'ours', 'loop_lag_fault_p99_ms', '{:.1f}')} "
                f"ms). The blocking baseline blocks the event loop for the whole stall (loop lag max "
                f"{_v(by, sc, 'blocking', 'loop_lag_max_ms')} ms): nothing else in the process runs and frames wait unread in "
                "the socket (see its *wire age*)."
            )
    if "server_abort" in by:
        out.append(
            f"* **Server abort mid-utterance.** Stock reports the error, sleeps 1 s and opens a new stream without replay: age max "
            f"{_v(by, 'server_abort', 'stock', 'age_max_ms')} ms, frames never read {_v(by, 'server_abort', 'stock', 'frames_lost')}. "
            f"Ours reconnects at once and replays the unfinalized audio: age max {_v(by, 'server_abort', 'ours', 'age_max_ms')} ms, "
            f"frames never read {_v(by, 'server_abort', 'ours', 'frames_lost')}, finals {_v(by, 'server_abort', 'ours', 'finals_delivered')}"
            f"/{_v(by, 'server_abort', 'ours', 'finals_expected')}."
        )
    if "long_call" in by:
        out.append(
            f"* **Call longer than the stream limit.** Frames never read: stock "
            f"{_v(by, 'long_call', 'stock', 'frames_lost')}, blocking {_v(by, 'long_call', 'blocking', 'frames_lost')}, ours "
            f"{_v(by, 'long_call', 'ours', 'frames_lost')}. Stock rotates by half-closing once a request or response arrives "
            f"after its limit; the emulator (like Google) then finalizes the half-heard utterance, so an utterance can come back "
            f"as two finals and a later one as none: the positional check counts words lost stock "
            f"{_v(by, 'long_call', 'stock', 'words_lost')}, extra finals {_v(by, 'long_call', 'stock', 'finals_extra')}. The "
            f"blocking baseline does not rotate; the server cuts it and it reconnects (words lost "
            f"{_v(by, 'long_call', 'blocking', 'words_lost')}). Ours rotates after a final or in silence and replays unfinalized "
            f"audio: finals {_v(by, 'long_call', 'ours', 'finals_delivered')}/{_v(by, 'long_call', 'ours', 'finals_expected')}, "
            f"words lost {_v(by, 'long_call', 'ours', 'words_lost')}, extra {_v(by, 'long_call', 'ours', 'finals_extra')}."
        )
    if "loop_hiccups" in by or "bunches" in by:
        out.append(
            f"* **Bunches and loop hiccups.** A bunch that stays below the high watermark (25 frames every 500 ms; or "
            f"the ~15 frames that pile up while another processor blocks the loop for 300 ms) is released as fast as the "
            f"sink takes it: the rate bound (audio released <= wall clock since the first frame + 2 s) only bites on a "
            f"sender running ahead of real time, and a bunch is late audio, not early. Audio age p99 with bunches ours "
            f"{_v(by, 'bunches', 'ours', 'age_p99_ms')} ms vs stock {_v(by, 'bunches', 'stock', 'age_p99_ms')} ms; with "
            f"hiccups ours {_v(by, 'loop_hiccups', 'ours', 'age_p99_ms')} ms vs stock "
            f"{_v(by, 'loop_hiccups', 'stock', 'age_p99_ms')} ms (the *entry → STT step* rows split the time between "
            "the RX queue and the writer). Both stay far better than the blocking baseline "
            f"({_v(by, 'bunches', 'blocking', 'age_p99_ms')} / {_v(by, 'loop_hiccups', 'blocking', 'age_p99_ms')} ms)."
        )
    if "reply" in by:
        merged = by.get("reply_merged", {}).get("ours")
        text = (
            f"* **Offline reply.** End of speech → first reply audio at the caller, p50 / max: stock "
            f"{_v(by, 'reply', 'stock', 'reply_p50_ms')} / {_v(by, 'reply', 'stock', 'reply_max_ms')} ms, ours "
            f"{_v(by, 'reply', 'ours', 'reply_p50_ms')} / {_v(by, 'reply', 'ours', 'reply_max_ms')} ms; audio age p99 stock "
            f"{_v(by, 'reply', 'stock', 'age_p99_ms')} ms, ours {_v(by, 'reply', 'ours', 'age_p99_ms')} ms (the pipeline takes "
            "about a second to start, and the caller's first second arrives as a burst with the first frame: the rate bound's "
            "2 s lead lets it through)."
        )
        if merged:
            text += (
                f" With RX's busy level fixed at 2 for the whole call (`reply_merged`: every frame held into a 60 ms chunk, "
                f"as on a loaded process; {_fmt(merged, 'rx_frames_per_push', '{:.2f}')} frames per push): reply p50 / max "
                f"{_fmt(merged, 'reply_p50_ms', '{:.0f}')} / {_fmt(merged, 'reply_max_ms', '{:.0f}')} ms, finals "
                f"{_fmt(merged, 'finals_delivered', '')}, words lost {_fmt(merged, 'words_lost', '{:d}')}, audio age p99 "
                f"{_fmt(merged, 'age_p99_ms', '{:.0f}')} ms: what merging under load costs a turn (Silero VAD sees 60 ms "
                "chunks; its windows are 32 ms, so its speech start / stop can move by up to 40 ms of audio)."
            )
        out.append(text)
    cap = scale_capacity(by)
    if cap:
        parts = []
        for pipe in PIPES:
            n = cap.get(pipe)
            r = by.get(f"scale_{n}", {}).get(pipe) if n else None
            if r:
                parts.append(
                    f"{pipe} carries {n} calls (p99 {_fmt(r, 'age_p99_ms', '{:.0f}')} ms, steady-state p99 "
                    f"{_fmt(r, 'age_p99_steady_ms', '{:.0f}')} ms, setup p99 {_fmt(r, 'age_p99_setup_ms', '{:.0f}')} ms, "
                    f"{_fmt(r, 'cpu_pct_per_call', '{:.1f}')} % of a core per call = {_fmt(r, 'calls_per_core', '{:.0f}')} calls per core)"
                )
            else:
                parts.append(f"{pipe} carries none of the tested N")
        out.append(
            "* **Scale.** With the emulator in its own process (its CPU is reported per call but not counted against the "
            "pipelines): " + "; ".join(parts) + ". *Setup p99* covers frames that entered while calls were still being set up "
            "(the first second after the last call started and before): stock's setup includes parsing its service-account "
            "credentials on the event loop for every call. The breakdown rows (*entry → STT step*, *STT step → server*) "
            "say where a failing rung's frames wait; the profile section says where the CPU goes. Ours merges frames in RX "
            "while the process measures itself busy (*frames per RX push* > 1): every processor downstream of RX, and the "
            "STT writer, then handles half or a third of the frames."
            + "".join(
                f" Round {k} of the ladder (pipelines in {'reverse' if k % 2 == 0 else 'the same'} order, after every other "
                f"scenario): {_cap_text(scale_capacity(b))} calls."
                for k, b in sorted((later or {}).items())
            )
        )
    out.append("")
    return out


def _method(rows) -> list[str]:
    ours_ws = {r.get("ws_protocol", "websockets-sansio") for r in rows if r["pipeline"].startswith("ours")}
    if ours_ws == {"read_ahead"}:
        ws_note = (
            " Its websocket server runs `ReadAheadWebSocketProtocol` (`pipecat_rxdrain.twilio.ws_read_ahead`, as the "
            "bundled bot does): uvicorn's `websockets-sansio` protocol, which stock and blocking get, pauses and resumes "
            "reading the socket around every message (two `epoll_ctl`, each a GIL release on the loop); ours pauses only "
            "at uvicorn's `ws_max_queue` (32) queued messages (`python -m benchmarks.bench_ws_read`). A stock user could "
            "make the same change, so ours' numbers include it."
        )
    elif len(ours_ws) == 1:
        ws_note = (
            f" Its websocket server runs uvicorn's `{next(iter(ours_ws))}` protocol, like stock's (`--uvicorn-ws`, or "
            "ours shared its process with another pipeline)."
        )
    else:
        ws_note = f" Its websocket server protocol differed between scenarios ({', '.join(sorted(ours_ws))})."
    return [
        "## How it is measured",
        "",
        "* **Same feed, one run.** Each pipeline runs every scenario in a benchmark process of its own, the pipelines one "
        "after another (never concurrently: the blocking baseline blocks the event loop on purpose). Separate processes "
        "because grpc.aio keeps every event loop that ever ran a grpc.aio call bound to its one completion queue, woken by "
        "every gRPC completion in the process: in a shared process stock's on-loop client would make ours pay for it "
        "(+40 to +70 µs of CPU per frame at 20 calls, `bench_stt_threads --modes shared,shared_bound`). The caller simulator (`pipecat_rxdrain.twilio.caller."
        "simulate_call`) sends Twilio's exact `connected`/`start`/`media`/`stop` messages (160-byte mu-law frames of the "
        "bundled `call_en` sample, looped, on an absolute 20 ms schedule, network stalls and bunches included) over a real "
        "websocket to a FastAPI app served by uvicorn on 127.0.0.1, where each call runs a Pipecat pipeline starting with "
        "`FastAPIWebsocketTransport.input()` (stock `TwilioFrameSerializer` for stock/blocking, "
        "`HardenedTwilioFrameSerializer` for ours). The callers run in their own process (`benchmarks/caller_proc.py`), so a "
        "blocked pipeline loop does not slow them down (their frames wait in the socket, as Twilio's would). No scenario "
        "uses an in-process shortcut. *Jitter* delays each send by a uniform 0..16 ms (±8 ms around its mean) on the "
        "absolute schedule; *small bunches* send 5 frames together every 100 ms; the *16 kHz* variant runs the pipeline at "
        "`audio_in_sample_rate=16000` (Pipecat's default), so the Twilio serializer resamples and its frames are merged "
        "by the stream resampler (ages and wire ages are mapped back to the caller's frames by message count).",
        "* **stock** = `transport.input() → pipecat.services.google.stt.GoogleSTTService` (pipecat-ai, unmodified). It "
        "is constructed with a generated service-account JSON (an RSA key made on the spot, never sent anywhere) so its "
        "constructor works offline, then its `_client` is replaced by `emulator_client(addr, api=\"v2\", asynchronous=True)` "
        "(the official `SpeechAsyncClient` on an insecure loopback channel). `_client.streaming_recognize` is wrapped only to "
        "add `x-rxdrain-session` metadata (channels in one process share a peer, so the emulator needs it to tell calls apart).",
        "* **blocking** = the pattern we started from: a receive queue of at most 200 frames (drop-oldest) that releases "
        "one frame and then sleeps 20 ms whatever its backlog, feeding a writer that hands each frame to a *synchronous* "
        "`streaming_recognize` (one-slot request queue) and waits on the event loop until gRPC has taken it.",
        "* **ours** = `transport.input() → RxDrainProcessor(sink=stt) → pipecat_rxdrain.stt.service.GoogleSTTService` "
        "with default settings (RX queue 200/100/20, STT queue 200, batch 60 ms)." + ws_note,
        "* **Emulator**: `SpeechEmulator` (real gRPC server, loopback), scripted recognizer, built in one place "
        "(`benchmarks/emulation.py`) with the run's `--timing` profile. The scale ladder and the profile scenario run it "
        "in its own process (`benchmarks/emulator_proc.py`, which hands back the per-chunk records at the end); the other "
        "scenarios run it in-process on its own thread. "
        "Server-stall scenarios run it with `small_window=True` (without it gRPC's default HTTP/2 windows absorb ~5 MB "
        "during a stall and no client feels back-pressure). The long-call scenario shortens its stream limit to 15 s and "
        "scales both clients' proactive rotation the same way (240/305 of the limit).",
        "* **Audio age** = emulator receive time of the chunk holding a frame (`time.monotonic()` on the server) − the time "
        "the frame entered the pipeline (stamped right after the serializer produced it; same process, same clock). Chunks "
        "are mapped to frames by byte offset per logical session; a frame replayed into a later stream keeps its first "
        "receive time; dropped frames have no age (they are counted as drops / frames never read).",
        "",
    ]


def _footnotes() -> list[str]:
    return [
        "---",
        "",
        "¹ *Wire age* = emulator receive time − the caller's scheduled send time (anchored at the harness's receipt of "
        "`start`). Unlike audio age it includes time a frame sat unread in the socket while the event loop was blocked "
        "(the blocking baseline's writer, the hiccup processor), which a stamp taken at deserialization cannot see.",
        "",
        "² The time the pipeline's STT step takes per frame: `run_stt` for stock (an `asyncio.Queue.put`) and ours "
        "(`push_audio`), the blocking writer's `put` for the baseline. `push_audio p99` is the raw "
        "`StreamingSTTSession.push_audio` call (ours only). Ours sends a frame as soon as its stream's previous write "
        "finished, as stock does; it joins audio into one request (at most `batch_ms=60`) only while a write is in flight "
        "or the process measures itself busy, so batching adds age only under load.",
        "",
        "³ From the caller sending the last speech frame of an utterance to the emulator sending its final; includes the "
        "emulator's 600 ms end-of-speech silence. Expected utterances come from the emulator's own segmenter run on the "
        "call audio. *Words lost* compares each delivered final with the emulator's script: every word of `script[n]` "
        "(n < expected utterances) missing from the final tagged `u<n>` counts. The scripted recognizer names the *n*-th "
        "final of a session `script[n]` whatever audio it heard, so a partly lost utterance still gets its full text: lost "
        "audio shows up in *frames never read*, a lost or split utterance in *words lost*.",
        "",
        "⁴ Process CPU time of the benchmark process (minus the in-process emulator's threads, when it runs in-process), "
        "per call, as % of one core; it includes the harness's own fixed cost (uvicorn, samplers) spread over the calls. "
        "With the emulator in-process its gRPC C-core threads are shared with the clients and counted in full. Emulator "
        "CPU per call is the emulator process's own CPU (scale and profile scenarios only). Threads per call = peak process "
        "threads − threads before the run, per call.",
        "",
        "⁵ *Steady state* = frames that entered the pipeline more than 1 s after the last call of the scenario started; "
        "*call setup* = the frames before (for one call: its first second).",
        "",
        "⁶ Per emulator stream, max over its chunks of (audio received so far ÷ the audio byte rate − wall time since the "
        "stream opened), from the emulator's per-chunk receive times; the row shows the largest over the scenario's "
        "streams. Positive = the client sent faster than real time (a drained backlog, a replay, audio queued during setup).",
        "",
        "⁷ Reply scenario only (offline full mode: STT → user aggregator with Silero VAD → `RuleBasedLLMService` → "
        "`EspeakTTSService` → transport output → assistant aggregator). From the caller's send time of an utterance's last "
        "speech frame (the emulator's segmenter on the call audio: the same reference for every pipeline) to the first bot "
        "audio message serialized for the caller's websocket after it; a reply only counts before the next utterance ends.",
        "",
    ]
