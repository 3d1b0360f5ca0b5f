"""mu-law codec and WAV -> Twilio frame conversion."""

from __future__ import annotations

import math
import struct
import warnings
import wave

import numpy as np
import pytest

from pipecat_rxdrain.twilio.audio import (
    FRAME_SAMPLES,
    MULAW_SILENCE,
    mulaw_decode,
    mulaw_encode,
    mulaw_frames,
    read_wav_pcm16_8k,
    wav_to_twilio_frames,
)

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop  # the reference G.711 coder (stdlib on 3.11/3.12, audioop-lts later)


def test_encoder_is_bit_exact_with_the_reference_coder_for_every_pcm16_value():
    pcm = np.arange(-32768, 32768, dtype="<i2").tobytes()
    assert mulaw_encode(pcm) == audioop.lin2ulaw(pcm, 2)


def test_decoder_is_bit_exact_for_all_256_codes():
    codes = bytes(range(256))
    assert mulaw_decode(codes) == audioop.ulaw2lin(codes, 2)


def test_round_trip_error_is_within_g711_quantisation():
    x = np.linspace(-30000, 30000, 5001).astype("<i2")
    y = np.frombuffer(mulaw_decode(mulaw_encode(x.tobytes())), dtype="<i2")
    rel = np.abs(y.astype(float) - x) / np.maximum(np.abs(x), 64)
    assert rel.max() < 0.07  # mu-law steps are ~3 % of the value (plus the smallest step near zero)


def test_odd_length_pcm_is_refused_clearly():
    with pytest.raises(ValueError, match="even number of bytes"):
        mulaw_encode(b"\x00\x01\x02")


def test_silence_encodes_to_0xff():
    assert mulaw_encode(bytes(4)) == bytes([MULAW_SILENCE, MULAW_SILENCE])


def _write_wav(path, *, rate, width, channels, seconds, freq=440.0):
    n = int(rate * seconds)
    t = np.arange(n) / rate
    x = 0.5 * np.sin(2 * math.pi * freq * t)
    if width == 1:
        data = (x * 127 + 128).astype(np.uint8)
    elif width == 2:
        data = (x * 32767).astype("<i2")
    elif width == 3:
        v = (x * (2**23 - 1)).astype(np.int32)
        data = np.stack([v & 0xFF, (v >> 8) & 0xFF, (v >> 16) & 0xFF], axis=1).astype(np.uint8)
    else:
        data = (x * (2**31 - 1)).astype("<i4")
    raw = np.repeat(data.reshape(n, -1), channels, axis=0).reshape(-1) if width != 3 else np.repeat(data, channels, axis=0).reshape(-1)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(raw.tobytes())


def _zero_crossings(pcm: bytes) -> int:
    x = np.frombuffer(pcm, dtype="<i2").astype(np.int32)
    return int(np.sum((x[:-1] < 0) & (x[1:] >= 0)))


@pytest.mark.parametrize(
    "rate,width,channels",
    [(8000, 2, 1), (16000, 2, 2), (44100, 3, 1), (48000, 4, 2), (11025, 1, 1), (22050, 2, 6)],
)
def test_any_pcm_wav_becomes_8k_mono_frames_with_the_same_pitch(tmp_path, rate, width, channels):
    path = tmp_path / "tone.wav"
    _write_wav(path, rate=rate, width=width, channels=channels, seconds=1.0)
    pcm = read_wav_pcm16_8k(path)
    assert abs(len(pcm) / 2 - 8000) <= 2  # one second at 8 kHz
    assert abs(_zero_crossings(pcm) - 440) <= 3  # the tone keeps its frequency
    frames = wav_to_twilio_frames(path)
    assert len(frames) == math.ceil(len(pcm) / 2 / FRAME_SAMPLES)
    assert all(len(f) == 160 for f in frames)


def test_last_frame_is_padded_with_silence():
    frames = mulaw_frames(bytes(2 * 170))
    assert len(frames) == 2 and frames[1][10:] == bytes([MULAW_SILENCE]) * 150


def test_non_pcm_or_missing_files_raise_clear_errors(tmp_path):
    bad = tmp_path / "float.wav"
    # a WAVE_FORMAT_IEEE_FLOAT header, which the wave module refuses
    data = struct.pack("<4sI4s4sIHHIIHH4sI", b"RIFF", 36, b"WAVE", b"fmt ", 16, 3, 1, 8000, 32000, 4, 32, b"data", 0)
    bad.write_bytes(data)
    with pytest.raises(ValueError, match="not a PCM WAV"):
        read_wav_pcm16_8k(bad)
    with pytest.raises(FileNotFoundError):
        read_wav_pcm16_8k(tmp_path / "missing.wav")
