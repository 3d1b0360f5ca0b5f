"""The demo's picture: audio age over the call, one line per path (matplotlib, the ``bench`` extra)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path


def plot_unavailable() -> str | None:
    """Why the plot cannot be drawn here (matplotlib missing), or None."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return "matplotlib is not installed (pip install 'pipecat-rxdrain[bench]')"
    return None


def plot_audio_age(
    path: Path,
    ages: Mapping[str, Sequence[tuple[float, float]]],
    *,
    stall: tuple[float, float] | None,
    title: str,
) -> Path:
    """Write a PNG of audio age (ms) against call time (s) for each path; returns the absolute path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.5), dpi=110)
    try:
        for (name, pts), color in zip(ages.items(), ("tab:red", "tab:green", "tab:blue"), strict=False):
            if pts:
                ax.plot([t for t, _ in pts], [a * 1e3 for _, a in pts], label=name, color=color, linewidth=1.4)
        if stall is not None:
            ax.axvspan(stall[0], stall[0] + stall[1], color="0.85", label=f"network stall ({stall[1]:g} s)")
        ax.set_xlabel("call time (s, when the caller spoke it)")
        ax.set_ylabel("audio age at Speech-to-Text (ms)")
        ax.set_title(title)
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
        ax.legend(loc="upper left")
        fig.tight_layout()
        path = Path(path).resolve()
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path)
    finally:
        plt.close(fig)
    return path
