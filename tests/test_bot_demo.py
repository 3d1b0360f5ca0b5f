"""``make demo`` end to end (shortened: the 7.6 s sample instead of the 23 s one)."""

from __future__ import annotations

import re

from pipecat_rxdrain import demo


def test_demo_runs_emulator_bot_and_caller_and_exits_zero(capsys):
    code = demo.main(["--sample", "hello_en", "--stall-at", "3.6", "--stall-s", "2.5"])
    out = capsys.readouterr().out
    assert code == 0, out[-3000:]
    assert "demo OK" in out and "bot stopped with SIGTERM, exit code 0" in out
    # RX is work-conserving: the frames held by the stall pass straight on (the STT takes them), so
    # the reader sees no drain and no standing queue
    rx = [line for line in out.splitlines() if "[RX]" in line]
    modes = [re.search(r"mode=(\w+)", line)[1] for line in rx]
    assert modes and set(modes) == {"normal"}
    assert re.search(r"\| RX drops\s+\| 0", out) and not re.search(r"\| RX peak q\s+\| \d{3}", out)
    assert "tomorrow morning at nine please" in out
