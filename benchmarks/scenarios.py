"""The benchmark's scenarios, full and quick. Each runs through all three pipelines.

The scale ladder and the profile scenario run the emulator in its own process; the others run it
in-process (its records are read directly). Every scenario gets the run's ``--timing`` unless it
pins ``timing=``.
"""

from __future__ import annotations

from .harness import Scenario

# The emulator timing of the realistic scenarios (a steady call and its variants, the reply): None follows the run's
# --timing; "google" pins them to TimingProfile.GOOGLE (finals ~0.9 s after the end of speech) whatever --timing says.
REALISTIC_TIMING: str | None = "google"
REALISTIC = ("steady", "jitter", "bunches_small", "steady_16k", "reply", "reply_merged")
# The issue's ladder, with 5 below it: stock can fail 10 calls on call setup alone, and a capacity of "none of
# the rungs" says nothing to compare against.
LADDER = [5, 10, 15, 20, 25, 30, 40, 50, 60]
QUICK_LADDER = [10, 20]
CAPACITY_P99_MS = 200.0  # a rung passes at audio-age p99 below this and 0 drops


def full() -> list[Scenario]:
    return [
        Scenario("steady", "Steady call, 60 s", audio_s=60, timing=REALISTIC_TIMING),
        Scenario("jitter", "Jitter: each frame 0..16 ms late (±8 ms), 20 s", audio_s=20, jitter_ms=16, timing=REALISTIC_TIMING),
        Scenario("bunches_small", "Small bunches: 5 frames every 100 ms, 20 s", audio_s=20, bunch=5, timing=REALISTIC_TIMING),
        Scenario("steady_16k", "Steady call, 16 kHz pipeline (serializer resamples), 20 s", audio_s=20, pipeline_rate=16000,
                 timing=REALISTIC_TIMING),
        Scenario("net_stall_2s", "Network stall 2 s at t=5 s, then burst", audio_s=12, net_stall=(5, 2), plot=True),
        Scenario("net_stall_5s", "Network stall 5 s at t=5 s, then burst", audio_s=16, net_stall=(5, 5), plot=True),
        Scenario("bunches", "Frames arrive in bunches of 25 (every 500 ms)", audio_s=12, bunch=25),
        Scenario("loop_hiccups", "Another processor blocks the loop 300 ms every 5 s", audio_s=16, hiccup=(5.0, 0.3)),
        Scenario(
            "server_stall_3s", "Server stall 3 s at t=6 s (small HTTP/2 windows)", audio_s=18,
            server_stall=(6, 3), small_window=True, plot=True,
        ),
        Scenario(
            "server_stall_10s", "Server stall 10 s at t=6 s (small HTTP/2 windows)", audio_s=22,
            server_stall=(6, 10), small_window=True, plot=True,
        ),
        Scenario("server_abort", "Server aborts the stream (UNAVAILABLE) mid-utterance at t=7.5 s", audio_s=14, abort_at_s=7.5),
        Scenario(
            "long_call", "Call longer than the stream limit (limit 12 s instead of 305 s; 35 s call)", audio_s=35,
            max_stream_s=12,
        ),
        reply(),
        reply_merged(),
        profile(15, audio_s=10),
    ] + scale(LADDER, audio_s=10)


def reply_merged(audio_s: float = 23.0) -> Scenario:
    """The reply scenario with RX merging as on a busy process, all call long (what it does to VAD and turns)."""
    return Scenario("reply_merged", f"Offline full mode, RX busy level fixed at 2 (every frame held into a 60 ms chunk), "
                    f"{audio_s:g} s call", audio_s=audio_s, reply=True, pipelines=("ours",), timing=REALISTIC_TIMING,
                    rx_busy_level=2)


def reply(audio_s: float = 23.0) -> Scenario:
    """The sample call once (5 utterances), answered by the offline full mode; stock STT vs ours."""
    return Scenario("reply", f"Offline full mode: end of speech → first reply audio, {audio_s:g} s call", audio_s=audio_s,
                    reply=True, pipelines=("stock", "ours"), timing=REALISTIC_TIMING)


def scale(ns: list[int], audio_s: float) -> list[Scenario]:
    return [
        Scenario(f"scale_{n}", f"{n} concurrent calls, {audio_s:g} s each (emulator in its own process)", audio_s=audio_s,
                 calls=n, stagger_s=min(2.0, 0.02 * n), group="scale", emulator_process=True)
        for n in ns
    ]


def profile(n: int, audio_s: float) -> Scenario:
    return Scenario(f"profile_{n}", f"CPU profile: {n} concurrent calls, {audio_s:g} s each (stack-sampled)", audio_s=audio_s,
                    calls=n, stagger_s=min(2.0, 0.02 * n), group="profile", emulator_process=True, profile=True)


def quick() -> list[Scenario]:
    return [
        Scenario("steady", "Steady call, 3 s (quick)", audio_s=3, timing=REALISTIC_TIMING),
        Scenario("jitter", "Jitter ±8 ms, 3 s (quick)", audio_s=3, jitter_ms=16, timing=REALISTIC_TIMING),
        Scenario("bunches_small", "Small bunches 5 per 100 ms, 3 s (quick)", audio_s=3, bunch=5, timing=REALISTIC_TIMING),
        Scenario("steady_16k", "Steady call, 16 kHz pipeline, 3 s (quick)", audio_s=3, pipeline_rate=16000, timing=REALISTIC_TIMING),
        Scenario("net_stall_2s", "Network stall 2 s at t=1.5 s, then burst (quick)", audio_s=5.5, net_stall=(1.5, 2), plot=True),
        Scenario(
            "server_stall_3s", "Server stall 3 s at t=1.5 s (small HTTP/2 windows, quick)", audio_s=6,
            server_stall=(1.5, 3), small_window=True, plot=True,
        ),
    ] + scale(QUICK_LADDER, audio_s=3.5)


def checks() -> list[Scenario]:
    """Short versions of the reconnect scenarios, to check the harness's byte mapping."""
    return [
        Scenario("abort_check", "Abort check", audio_s=6, abort_at_s=2.5),
        Scenario("long_check", "Long-call check (limit 4 s)", audio_s=10, max_stream_s=4),
    ]


def smoke() -> list[Scenario]:
    return [Scenario("smoke", "Smoke: 1.5 s call", audio_s=1.5)]


def rung_passes(row: dict, key: str = "age_p99_ms") -> bool:
    """The capacity criterion: audio-age p99 (``key``; the steady-state one for the steady-state capacity) < 200 ms
    and 0 drops (NaN p99 = nothing measured = fail)."""
    p99 = row.get(key)
    return isinstance(p99, (int, float)) and p99 == p99 and p99 < CAPACITY_P99_MS and row.get("drops", 1) == 0


def rung_worth_climbing(row: dict) -> bool:
    """A pipeline climbs the ladder while it passes overall or in steady state (so both capacities are measured)."""
    return rung_passes(row) or rung_passes(row, "age_p99_steady_ms")
