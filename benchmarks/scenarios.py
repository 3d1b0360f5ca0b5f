"""The benchmark's scenarios, full and quick. Each runs through all three pipelines."""

from __future__ import annotations

from .harness import Scenario


def full() -> list[Scenario]:
    return [
        Scenario("steady", "Steady call, 60 s", audio_s=60),
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
    ] + scale([1, 10, 25, 50, 100], audio_s=10)


def scale(ns: list[int], audio_s: float) -> list[Scenario]:
    return [
        Scenario(f"scale_{n}", f"{n} concurrent calls, {audio_s:g} s each", audio_s=audio_s, calls=n,
                 stagger_s=min(2.0, 0.02 * n), group="scale")
        for n in ns
    ]


def quick() -> list[Scenario]:
    return [
        Scenario("steady", "Steady call, 4 s (quick)", audio_s=4),
        Scenario("net_stall_2s", "Network stall 2 s at t=1.5 s, then burst (quick)", audio_s=5.5, net_stall=(1.5, 2), plot=True),
        Scenario(
            "server_stall_3s", "Server stall 3 s at t=1.5 s (small HTTP/2 windows, quick)", audio_s=6,
            server_stall=(1.5, 3), small_window=True, plot=True,
        ),
    ] + scale([10, 25], audio_s=3.5)


def checks() -> list[Scenario]:
    """Short versions of the reconnect scenarios, to check the harness's byte mapping."""
    return [
        Scenario("abort_check", "Abort check", audio_s=6, abort_at_s=2.5),
        Scenario("long_check", "Long-call check (limit 4 s)", audio_s=10, max_stream_s=4),
    ]


def smoke() -> list[Scenario]:
    return [Scenario("smoke", "Smoke: 1.5 s call", audio_s=1.5)]
