"""The offline reply services in real Pipecat pipelines: rule-based LLM and espeak-ng TTS (no mocks)."""

from __future__ import annotations

import os
import shutil
import stat
import time

import numpy as np
import pytest
from pipecat.frames.frames import (
    EndFrame,
    ErrorFrame,
    LLMContextFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
    TTSAudioRawFrame,
    TTSSpeakFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
)
from pipecat.processors.aggregators.llm_context import LLMContext

from pipecat_rxdrain.offline import (
    EspeakError,
    EspeakNotFoundError,
    EspeakSynthesizer,
    EspeakTTSService,
    ReplyRule,
    ReplyRules,
    RuleBasedLLMService,
)
from pipecat_rxdrain.offline.espeak import parse_wav
from tests.helpers.pipeline import run_pipeline
from tests.helpers.waiting import wait_until

pytestmark = pytest.mark.timeout(60)

HAVE_ESPEAK = shutil.which("espeak-ng") is not None
if not HAVE_ESPEAK and os.environ.get("CI"):
    raise RuntimeError("espeak-ng must be installed in CI (.ci/run installs it)")
needs_espeak = pytest.mark.skipif(not HAVE_ESPEAK, reason="espeak-ng not installed (apt-get install espeak-ng)")


def context_saying(*user_texts: str) -> LLMContext:
    ctx = LLMContext()
    for t in user_texts:
        ctx.add_message({"role": "user", "content": t})
    return ctx


# ------------------------------------------------------------------------------------------ rules


def test_rules_first_match_wins_and_fallback_covers_the_rest():
    rules = ReplyRules([ReplyRule(r"\bparcel\b", "About your parcel."), ReplyRule(r"\bpar", "second")], fallback="Pardon?")
    assert rules.reply_for("Where is my PARCEL now") == "About your parcel."
    assert rules.reply_for("nothing relevant") == "Pardon?"
    assert rules.reply_for("") == "Pardon?" and rules.reply_for(None) == "Pardon?"
    assert rules.reply_for("x" * 100_000) == "Pardon?"  # long input is cut, not an error


def test_rules_reject_bad_configuration_naming_it():
    with pytest.raises(ValueError, match="regular expression"):
        ReplyRule("(unclosed", "x")
    with pytest.raises(ValueError, match="reply must not be empty"):
        ReplyRule("a", "  ")
    with pytest.raises(ValueError, match="fallback"):
        ReplyRules([], fallback="")
    with pytest.raises(ValueError, match="rules must be a ReplyRules"):
        RuleBasedLLMService(rules=["hello"])


def test_default_rules_answer_the_sample_call():
    from pipecat_rxdrain.samples import load_sample

    replies = {ReplyRules.default().reply_for(s) for s in load_sample("call_en").segments}
    assert any("delivery" in r for r in replies), replies


# ------------------------------------------------------------------------------------------ LLM


async def test_rule_llm_answers_each_context_frame_with_start_text_end():
    llm = RuleBasedLLMService(rules=ReplyRules([ReplyRule("hello", "Hi there.")], fallback="Say again?"))

    async def script(worker, src, dst):
        await worker.queue_frame(LLMContextFrame(context_saying("hello bot")))
        await worker.queue_frame(LLMContextFrame(context_saying("hello bot", "what is the weather")))
        await wait_until(lambda: len(dst.down(LLMFullResponseEndFrame)) == 2)
        await worker.queue_frame(EndFrame())

    _, dst = await run_pipeline([llm], script)
    kinds = [type(f).__name__ for f in dst.down((LLMFullResponseStartFrame, LLMTextFrame, LLMFullResponseEndFrame))]
    assert kinds == ["LLMFullResponseStartFrame", "LLMTextFrame", "LLMFullResponseEndFrame"] * 2
    assert [f.text for f in dst.down(LLMTextFrame)] == ["Hi there.", "Say again?"]  # answers the newest user turn
    assert not dst.down(LLMContextFrame)  # consumed, as a cloud LLM does
    assert not dst.all(ErrorFrame)


def test_rule_llm_reads_text_parts_and_ignores_other_roles():
    from pipecat_rxdrain.offline.llm import last_user_text

    msgs = [
        {"role": "user", "content": [{"type": "text", "text": "refund"}, {"type": "image_url", "image_url": {}}]},
        {"role": "assistant", "content": "ok"},
    ]
    assert last_user_text(msgs) == "refund"
    assert last_user_text([{"role": "system", "content": "be nice"}]) == ""


# ------------------------------------------------------------------------------------------ espeak


def test_missing_espeak_is_a_clear_error_at_construction(tmp_path):
    with pytest.raises(EspeakNotFoundError, match="apt-get install espeak-ng"):
        EspeakTTSService(synthesizer=EspeakSynthesizer(espeak_path=str(tmp_path / "no-such-espeak-ng")))
    with pytest.raises(ValueError, match="not both"):
        EspeakTTSService(voice="en-us", synthesizer=EspeakSynthesizer(espeak_path=shutil.which("sh")))
    with pytest.raises(ValueError, match="voice"):
        EspeakSynthesizer(voice="--evil", espeak_path=shutil.which("sh"))


def test_parse_wav_rejects_garbage_and_reads_a_pipe_style_header():
    with pytest.raises(EspeakError):
        parse_wav(b"not a wav at all")
    import struct

    pcm = np.arange(100, dtype=np.int16).tobytes()
    header = b"RIFF" + struct.pack("<I", 0xFFFFFFFF) + b"WAVE" + b"fmt " + struct.pack("<IHHIIHH", 16, 1, 1, 22050, 44100, 2, 16)
    wav = header + b"data" + struct.pack("<I", 0xFFFFFFFF) + pcm  # sizes unknown, as when streaming to a pipe
    assert parse_wav(wav) == (pcm, 22050)
    stereo = header.replace(struct.pack("<HH", 1, 1), struct.pack("<HH", 1, 2), 1)
    with pytest.raises(EspeakError, match="mono"):
        parse_wav(stereo + b"data" + struct.pack("<I", 4) + b"\0\0\0\0")


async def test_synthesizer_times_out_and_reaps_the_subprocess(tmp_path):
    slow = tmp_path / "espeak-ng"
    pidfile = tmp_path / "pid"
    slow.write_text(f"#!/bin/sh\necho $$ > {pidfile}\nexec sleep 30\n")
    slow.chmod(slow.stat().st_mode | stat.S_IEXEC)
    synth = EspeakSynthesizer(espeak_path=str(slow), timeout_s=0.5)
    t0 = time.monotonic()
    with pytest.raises(EspeakError, match="did not finish within 0.5 s"):
        await synth.synthesize("hello")
    assert time.monotonic() - t0 < 5
    pid = int(pidfile.read_text())
    assert not os.path.exists(f"/proc/{pid}") or "zombie" not in open(f"/proc/{pid}/status").read().lower()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


@needs_espeak
async def test_synthesizer_makes_speech():
    pcm, rate = await EspeakSynthesizer().synthesize("Hello, how can I help you today?")
    samples = np.frombuffer(pcm, dtype=np.int16)
    assert rate == 22050
    assert 1.0 < len(samples) / rate < 5.0
    assert np.sqrt(np.mean(samples.astype(float) ** 2)) > 300  # speech, not silence


@needs_espeak
@pytest.mark.parametrize("out_rate", [8000, 16000])
async def test_espeak_tts_speaks_at_the_pipeline_rate(out_rate):
    tts = EspeakTTSService()

    async def script(worker, src, dst):
        await worker.queue_frame(TTSSpeakFrame("Goodbye, and have a nice day."))
        await wait_until(lambda: dst.down(TTSStoppedFrame), timeout=15)
        await worker.queue_frame(EndFrame())

    src, dst = await run_pipeline([tts], script, out_rate=out_rate)
    down = dst.down()
    audio = [f for f in down if isinstance(f, TTSAudioRawFrame)]
    assert audio and all(f.sample_rate == out_rate and f.num_channels == 1 for f in audio)
    i_start = next(i for i, f in enumerate(down) if isinstance(f, TTSStartedFrame))
    i_stop = next(i for i, f in enumerate(down) if isinstance(f, TTSStoppedFrame))
    assert i_start < down.index(audio[0]) and down.index(audio[-1]) < i_stop
    pcm = np.frombuffer(b"".join(f.audio for f in audio), dtype=np.int16)
    assert 1.0 < len(pcm) / out_rate < 5.0, len(pcm) / out_rate
    assert np.sqrt(np.mean(pcm.astype(float) ** 2)) > 300
    assert not src.all(ErrorFrame) and not dst.all(ErrorFrame)


async def test_espeak_tts_failure_is_an_error_frame_not_a_crash(tmp_path):
    broken = tmp_path / "espeak-ng"
    broken.write_text("#!/bin/sh\necho 'voice not found' >&2\nexit 1\n")
    broken.chmod(broken.stat().st_mode | stat.S_IEXEC)
    tts = EspeakTTSService(synthesizer=EspeakSynthesizer(espeak_path=str(broken)))

    async def script(worker, src, dst):
        await worker.queue_frame(TTSSpeakFrame("hello"))
        await wait_until(lambda: src.all(ErrorFrame) or dst.all(ErrorFrame), timeout=15)
        await worker.queue_frame(EndFrame())

    src, dst = await run_pipeline([tts], script)
    errors = src.all(ErrorFrame) + dst.all(ErrorFrame)
    assert any("voice not found" in e.error for e in errors), errors
    assert not dst.down(TTSAudioRawFrame)


@needs_espeak
async def test_rule_llm_into_espeak_tts_gives_reply_audio():
    llm, tts = RuleBasedLLMService(), EspeakTTSService()

    async def script(worker, src, dst):
        await worker.queue_frame(LLMContextFrame(context_saying("it was supposed to arrive yesterday")))
        await wait_until(lambda: dst.down(TTSStoppedFrame), timeout=15)
        await worker.queue_frame(EndFrame())

    _, dst = await run_pipeline([llm, tts], script)
    audio = dst.down(TTSAudioRawFrame)
    assert sum(len(f.audio) for f in audio) / 2 / 8000 > 1.0
    spoken = " ".join(getattr(f, "text", "") for f in dst.down() if type(f).__name__ == "TTSTextFrame")
    assert "delivery" in spoken, spoken
