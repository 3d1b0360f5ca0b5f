"""Regenerate ``brooklyn_bridge_16k.wav``: "how old is the Brooklyn Bridge" spoken by espeak-ng.

Stands in for Google's ``speech/snippets/resources/audio.raw`` / ``audio.wav`` (the same sentence,
16 kHz mono LINEAR16), which we do not copy into this repository. espeak-ng (GPL-3.0; its output
audio is not covered by the GPL) at 130 words/min, resampled 22050 -> 16000 Hz by linear
interpolation, 0.2 s of silence either side. Needs ``apt-get install espeak-ng``.

    python tests/data/make_brooklyn_bridge.py
"""

import subprocess
import tempfile
import wave
from pathlib import Path

import numpy as np

from pipecat_rxdrain.emulator.recognizers import resample_int16

TEXT = "how old is the Brooklyn Bridge"
OUT = Path(__file__).with_name("brooklyn_bridge_16k.wav")


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "espeak.wav"
        subprocess.run(["espeak-ng", "-v", "en-us", "-s", "130", "-w", str(src), TEXT], check=True)
        with wave.open(str(src)) as w:
            rate = w.getframerate()
            pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    pad = np.zeros(3200, dtype=np.int16)
    pcm = np.concatenate([pad, resample_int16(pcm, rate, 16000), pad])
    with wave.open(str(OUT), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(pcm.tobytes())


if __name__ == "__main__":
    main()
