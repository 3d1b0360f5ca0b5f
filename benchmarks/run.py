"""Side-by-side benchmark: stock Pipecat vs the blocking baseline vs pipecat-rxdrain, one run.

    python -m benchmarks.run --quick        # < 3 min: a few short scenarios (make bench-quick)
    python -m benchmarks.run --full         # ~25 min: every scenario, and the scale ladder twice (make bench)
    python -m benchmarks.run --only steady,net_stall_2s --full
    python -m benchmarks.run --full --only ladder --pipelines stock,ours   # just the capacity ladder
    python -m benchmarks.run --timing google   # emulator timing profile (realistic finals), default fast
    python -m benchmarks.run --report-only /tmp/rxdrain-bench-last-rows.pkl   # re-render the last run

Each pipeline runs every scenario in a child process of its own (``--same-process`` for
one process), the pipelines one after another (never at the same time: the blocking
baseline blocks the event loop by design), against the local emulator, fed by the caller
simulator over the real websocket transport. ``--full``
writes ``benchmarks/RESULTS.md`` and ``benchmarks/plots/*.png``; ``--quick`` writes the
same into ``$TMPDIR/rxdrain-bench-quick/`` (``--out`` to choose). Prints a summary as it
goes. Asserts nothing.

The scale ladder (``scale_<N>``) climbs N per pipeline and stops climbing for a pipeline after two
consecutive rungs that fail the capacity criterion (audio-age p99 < 200 ms and 0 drops; two, so one
noisy rung on a shared machine does not end it), so a saturated pipeline does not spend minutes at N
it cannot carry. With ``--full`` the ladder runs in two rounds (``--ladder-rounds``): the second, after
every other scenario, runs the pipelines in reverse order, so each pipeline's ladder is measured once
early and once late and a slow spell of a shared machine does not fall on one pipeline only; capacity
is reported per round.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path

from loguru import logger

HERE = Path(__file__).resolve().parent
LADDER_STOP_AFTER = 2  # consecutive failing rungs before a pipeline stops climbing


async def run_all(
    scenarios, pipelines, *, timing: str | None = None, uvicorn_ws: bool = False, progress=print
) -> list[dict]:
    from .harness import BenchServer, run_scenario
    from .metrics import expected_utterances, summarize
    from .scenarios import rung_worth_climbing

    server = BenchServer(read_ahead=not uvicorn_ws and all(p.startswith("ours") for p in pipelines))
    url = await server.start()
    rows: list[dict] = []
    try:
        # Warm-up (discarded): imports, first channels and first pipelines of each kind.
        from .scenarios import smoke

        for pipeline in pipelines:
            await run_scenario(server, url, smoke()[0], pipeline, timing=timing)
        failed_rungs: dict[str, list[int]] = {}  # pipeline -> consecutive failing ladder N
        for sc in scenarios:
            expected = expected_utterances(sc.audio_s)
            for pipeline in pipelines:
                if sc.pipelines is not None and pipeline not in sc.pipelines:
                    continue
                failed = failed_rungs.get(pipeline, [])
                if sc.group == "scale" and len(failed) >= LADDER_STOP_AFTER:
                    progress(f"  {sc.key:<18} {pipeline:<9} skipped: failed at N={', '.join(map(str, failed))}")
                    continue
                t0 = time.monotonic()
                run = await run_scenario(server, url, sc, pipeline, timing=timing)
                row = summarize(run, expected)
                row["bench_wall_s"] = time.monotonic() - t0
                row["ws_protocol"] = server.ws_protocol
                rows.append(row)
                if sc.group == "scale":
                    failed_rungs[pipeline] = [] if rung_worth_climbing(row) else failed + [sc.calls]
                progress(
                    f"  {sc.key:<18} {pipeline:<9} age p50/p99/max {row['age_p50_ms']:7.1f} {row['age_p99_ms']:8.1f} "
                    f"{row['age_max_ms']:8.1f} ms  steady p99 {row['age_p99_steady_ms']:8.1f}  wire p99 "
                    f"{row['wire_age_p99_ms']:8.1f} ms  drops {row['drops']:4d}  lost {row['frames_lost']:4d}  "
                    f"words lost {row['words_lost']:3d}  CPU/call {row['cpu_pct_per_call']:4.1f} %  ({row['bench_wall_s']:.1f} s)"
                )
                await asyncio.sleep(0.2)
    finally:
        await server.stop()
    return rows


def isolated_rows(
    scenarios, pipelines, *, mode_name: str, timing: str, uvicorn_ws: bool = False
) -> tuple[list[dict], list[str]]:
    """Every pipeline's scenarios in a child process of its own: (rows in scenario order, pipelines whose child failed).

    Why: grpc.aio has one completion queue per process, and every event loop that ever ran a
    grpc.aio call stays bound to it, woken by every gRPC completion in the process. Stock's
    client binds the benchmark's loop (Pipecat's), so in one shared process ours would pay for
    stock's gRPC design (+40 to +70 µs of CPU per frame at 20 calls, ``bench_stt_threads --modes
    shared,shared_bound``), a cost a user swapping stock for ours does not have. Each child still
    runs the warm-up and the ladder's stop rule.
    """
    import pickle
    import subprocess
    import tempfile

    keys = ",".join(sc.key for sc in scenarios)
    by_key: dict[tuple[str, str], dict] = {}
    failed: list[str] = []
    with tempfile.TemporaryDirectory(prefix="rxdrain-bench-") as tmp:
        for pipeline in pipelines:
            out = Path(tmp) / f"{pipeline}.pkl"
            cmd = [
                sys.executable, "-m", "benchmarks.run", f"--{mode_name}", "--child", "--only", keys,
                "--pipelines", pipeline, "--timing", timing, "--no-report", "--rows-out", str(out),
            ] + (["--uvicorn-ws"] if uvicorn_ws else [])
            proc = subprocess.run(cmd, cwd=HERE.parent, check=False)
            if proc.returncode or not out.exists():
                print(f"  {pipeline}: child run failed (exit {proc.returncode}); its rows are missing", flush=True)
                failed.append(pipeline)
                continue
            for row in pickle.loads(out.read_bytes())["rows"]:
                by_key[(row["scenario"], row["pipeline"])] = row
    return [by_key[(sc.key, p)] for sc in scenarios for p in pipelines if (sc.key, p) in by_key], failed


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="short scenarios, under 2 minutes (default)")
    mode.add_argument("--full", action="store_true", help="every scenario at full length")
    p.add_argument("--only", help="comma-separated scenario keys to run")
    p.add_argument("--pipelines", default="stock,blocking,ours")
    p.add_argument(
        "--uvicorn-ws", action="store_true",
        help="serve ours with uvicorn's websockets-sansio protocol too (default: ours gets ReadAheadWebSocketProtocol, "
        "as the bundled bot does; stock and blocking always get uvicorn's)",
    )
    p.add_argument(
        "--timing", default=None, metavar="PROFILE",
        help="emulator timing profile, passed to every emulator the run builds, in-process or its own process "
        "(fast | google; default fast, the emulator's only timing before TimingProfile)",
    )
    p.add_argument(
        "--out", type=Path, default=None,
        help="directory for RESULTS.md and plots/ (default: benchmarks/ with --full; a temp dir with --quick, "
        "so iterating never overwrites the committed full results)",
    )
    p.add_argument("--json", type=Path, help="also dump the rows as JSON here")
    p.add_argument("--rows-out", type=Path, default=None, help="where to pickle the rows for --report-only (default: $TMPDIR)")
    p.add_argument("--no-report", action="store_true", help="print numbers only")
    p.add_argument("--report-only", type=Path, metavar="PKL", help="re-render the report from a saved run (see report.LAST_ROWS)")
    p.add_argument(
        "--same-process", action="store_true",
        help="run every pipeline in this one process (default: one child process per pipeline, see isolated_rows)",
    )
    p.add_argument(
        "--ladder-rounds", type=int, default=None, metavar="N",
        help="run the scale ladder N times, every pipeline in each round, the pipelines' order reversed in every "
        "other round; capacity is reported per round (default: 2 with --full, 1 with --quick)",
    )
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)  # run --only's keys in the order given
    args = p.parse_args(argv)

    if args.out is None:
        import tempfile

        args.out = HERE if args.full or args.report_only else Path(tempfile.gettempdir()) / "rxdrain-bench-quick"
    if args.report_only:
        import pickle

        from .report import write_report

        saved = pickle.loads(args.report_only.read_bytes())
        print(f"wrote {write_report(saved['rows'], args.out, mode=saved['mode'], elapsed_s=saved['elapsed_s'])}")
        return 0

    logger.remove()
    # Only the harness's own errors: the pipelines' expected errors (injected faults) are measured, not logged.
    logger.add(sys.stderr, level="ERROR", filter=lambda r: r["name"].startswith("benchmarks"))
    os.environ.pop("SPEECH_EMULATOR_HOST", None)

    from . import scenarios as S
    from .emulation import DEFAULT_TIMING, timing_kwargs

    args.timing = args.timing or DEFAULT_TIMING
    try:
        timing_kwargs(args.timing)
    except ValueError as e:
        p.error(str(e))
    scenarios = S.full() if args.full else S.quick()
    if args.only:
        keys = set(args.only.split(","))
        if "ladder" in keys:  # every scale_<N> of the mode
            keys.discard("ladder")
            keys |= {s.key for s in scenarios if s.group == "scale"}
        pool = {s.key: s for s in S.full() + S.quick() + S.smoke() + S.checks()}
        if args.child:  # the parent's list, in its order (a key of this mode wins over the pool's)
            pool |= {s.key: s for s in scenarios}
            scenarios = [pool[k] for k in args.only.split(",")]
        else:
            scenarios = [s for s in scenarios if s.key in keys] + [pool[k] for k in keys if k not in {s.key for s in scenarios} and k in pool]
    pipelines = [x for x in args.pipelines.split(",") if x]
    if not scenarios:
        p.error(f"no scenario matches --only {args.only!r}")
    mode_name = "full" if args.full else "quick"
    print(
        f"benchmarks.run --{mode_name}: {len(scenarios)} scenarios x {len(pipelines)} pipelines, emulator timing {args.timing}",
        flush=True,
    )
    t0 = time.monotonic()
    failed: list[str] = []
    rounds = args.ladder_rounds if args.ladder_rounds is not None else (2 if args.full else 1)
    if rounds < 1:
        p.error(f"--ladder-rounds must be >= 1, got {rounds}")
    if len(pipelines) > 1 and not args.same_process:
        rows, failed = isolated_rows(scenarios, pipelines, mode_name=mode_name, timing=args.timing, uvicorn_ws=args.uvicorn_ws)
        ladder = [sc for sc in scenarios if sc.group == "scale"]
        for k in range(2, rounds + 1 if ladder else 1):
            order = pipelines[::-1] if k % 2 == 0 else pipelines
            print(f"scale ladder, round {k} of {rounds}: {', '.join(order)}", flush=True)
            more, more_failed = isolated_rows(ladder, order, mode_name=mode_name, timing=args.timing, uvicorn_ws=args.uvicorn_ws)
            rows += [{**r, "round": k} for r in more]
            failed += [f"{p_} (ladder round {k})" for p_ in more_failed]
    else:
        rows = asyncio.run(run_all(scenarios, pipelines, timing=args.timing, uvicorn_ws=args.uvicorn_ws))
    elapsed = time.monotonic() - t0
    print(f"done in {elapsed:.0f} s")
    try:  # kept so the report can be re-rendered without re-running (--report-only)
        import pickle
        import tempfile

        last = args.rows_out or Path(tempfile.gettempdir()) / "rxdrain-bench-last-rows.pkl"
        last.write_bytes(pickle.dumps({"rows": rows, "mode": mode_name, "elapsed_s": elapsed}))
    except OSError:
        pass
    if args.json:
        args.json.write_text(json.dumps([{k: v for k, v in r.items() if not k.startswith("_")} for r in rows], indent=1, default=str))
    if failed:
        print(f"no report: the run of {', '.join(failed)} failed (a report without its rows would be wrong)")
        return 1
    if not args.no_report:
        from .report import write_report

        path = write_report(rows, args.out, mode=mode_name, elapsed_s=elapsed)
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
