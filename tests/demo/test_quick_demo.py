"""``rxdrain demo --quick`` end to end: the same call through the blocking baseline and through ours.

Two emulators (Google-like timing, one seed), two example-bot subprocesses, the simulated caller; the
summary it prints must carry real, comparable numbers (not a template): checked here from the table.
"""

from __future__ import annotations

import re

import pytest

from pipecat_rxdrain import demo
from pipecat_rxdrain.demo.plot import plot_unavailable
from pipecat_rxdrain.samples import load_sample


def _cells(out: str, row: str) -> list[str]:
    line = next((ln for ln in out.splitlines() if ln.startswith(f"| {row} ")), None)
    assert line is not None, f"no summary row {row!r}:\n{out[-3000:]}"
    return [c.strip() for c in line.strip("|").split("|")[1:]]


def _numbers(cell: str) -> list[float]:
    return [float(x) for x in re.findall(r"(?<![\w.])-?\d+(?:\.\d+)?", cell)]  # not the 50 of "p50"


def test_quick_demo_runs_both_paths_and_the_summary_tells_them_apart(tmp_path, capsys):
    png = tmp_path / "age.png"
    code = demo.main(["--quick", "--quiet", "--plot", str(png)])
    out = capsys.readouterr().out
    assert code == 0, out[-4000:]
    assert "demo OK" in out and out.count("bot stopped with SIGTERM, exit code 0") == 2
    assert "emulator timing google" in out
    header = next(ln for ln in out.splitlines() if ln.startswith("|  ") and "blocking" in ln)
    assert header.index("blocking") < header.index("ours")
    segments = len(load_sample("hello_en").segments)

    # both paths transcribe the whole call: every scripted utterance has a final
    assert [_numbers(c)[0] for c in _cells(out, "finals")] == [segments, segments]
    # the blocking path delivers Google's own finals: word for word what the caller said
    assert _numbers(_cells(out, "finals word for word as spoken")[0])[0] == segments
    assert "tomorrow morning at nine please" in out.split("ours transcripts:")[0]  # after the stall
    # audio age: the blocking pacer never catches up; ours passes the held audio straight on
    (b50, b99, bmax), (o50, o99, omax) = (_numbers(c)[:3] for c in _cells(out, "audio age p50 / p99 / max"))
    assert o99 < b99 and o50 < b50 and omax <= bmax + 300
    assert b50 > 500  # the stall (2.5 s) and the start-up backlog stay in the blocking queue
    # the stall's 2.5 s of held audio sits in the blocking queue; ours takes it at once, drops nothing
    b_peak, o_peak = (_numbers(c)[0] for c in _cells(out, "peak q (RX queue, frames)"))
    assert b_peak >= 100 > o_peak
    assert [_numbers(c)[0] for c in _cells(out, "drops (RX + STT, frames)")][1] == 0
    assert _cells(out, "time in drain")[0].startswith("none")
    b_final, o_final = (_numbers(c)[0] for c in _cells(out, "end of speech -> final"))
    assert 0 < o_final < b_final
    if "bots answer offline" in out:  # espeak-ng and the offline services are here: replies are timed
        b_reply, o_reply = _cells(out, "end of speech -> reply audio")
        assert o_reply != "n/a" and _numbers(o_reply)[0] > 0
        assert _numbers(_cells(out, "utterances answered")[1])[0] >= 1
    else:
        assert "replies skipped:" in out
    if plot_unavailable() is None:
        assert f"plot of audio age over time, both paths: {png.resolve()}" in out
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    else:
        assert "plot skipped: matplotlib is not installed" in out


def test_without_matplotlib_the_demo_says_the_plot_was_skipped_and_why(monkeypatch, capsys, tmp_path):
    import sys

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    assert "matplotlib is not installed" in plot_unavailable()
    res = demo.DemoResult("hello_en", ("a", "b"), [1.0, 2.0], (3.6, 2.5), False, "n/a",
                          {name: demo.PathResult(name, ap) for name, ap in demo.PATHS})
    demo._report(res, tmp_path / "x.png")
    out = capsys.readouterr().out
    assert "plot skipped: matplotlib is not installed (pip install 'pipecat-rxdrain[bench]')" in out
    assert res.plot is None and not (tmp_path / "x.png").exists()
    assert res.exit_code == 1  # no calls went through: not OK


@pytest.mark.parametrize("argv", [["--sample", "nope"]])
def test_demo_rejects_an_unknown_sample_with_a_message(argv, capsys):
    assert demo.main([*argv, "--quiet", "--no-plot"]) == 1
    assert "no bundled sample 'nope'" in capsys.readouterr().err
