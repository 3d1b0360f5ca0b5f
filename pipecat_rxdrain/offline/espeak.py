"""``EspeakSynthesizer``: text -> 16-bit mono PCM through the ``espeak-ng`` program (no Pipecat import).

Runs ``espeak-ng --stdout --stdin`` as an asyncio subprocess per utterance (the text goes in on stdin,
so no text is ever parsed as an option), bounded by a timeout, and parses the WAV it writes.
"""

from __future__ import annotations

import asyncio
import shutil
import struct


class EspeakError(RuntimeError):
    """espeak-ng failed, timed out or wrote something that is not 16-bit mono WAV."""


class EspeakNotFoundError(EspeakError):
    """The espeak-ng program is not installed (or not at the given path)."""


def find_espeak(path: str | None = None) -> str:
    """The espeak-ng executable to run; raises :class:`EspeakNotFoundError` naming the fix."""
    found = shutil.which(path or "espeak-ng")
    if found is None:
        where = f"at {path!r}" if path else "on PATH"
        raise EspeakNotFoundError(
            f"espeak-ng not found {where}: install it (Debian/Ubuntu: apt-get install espeak-ng) or pass espeak_path="
        )
    return found


def parse_wav(data: bytes) -> tuple[bytes, int]:
    """(PCM16 mono samples, sample rate) from a RIFF/WAVE file as espeak-ng writes it to a pipe.

    espeak-ng streaming to stdout cannot seek back to fill in the sizes, so the ``data`` chunk's size is
    taken as "the rest of the file" when it says more than is there.
    """
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise EspeakError("espeak-ng output is not a WAV file")
    pos, rate, fmt_ok = 12, None, False
    while pos + 8 <= len(data):
        cid, size = data[pos : pos + 4], struct.unpack_from("<I", data, pos + 4)[0]
        body = pos + 8
        if cid == b"fmt ":
            if size < 16 or body + 16 > len(data):
                raise EspeakError("espeak-ng WAV has a short fmt chunk")
            tag, channels, rate, _, _, bits = struct.unpack_from("<HHIIHH", data, body)
            fmt_ok = tag == 1 and channels == 1 and bits == 16
            if not fmt_ok:
                raise EspeakError(f"espeak-ng WAV is not 16-bit mono PCM (format {tag}, {channels} ch, {bits} bit)")
        elif cid == b"data":
            if not fmt_ok or not rate:
                raise EspeakError("espeak-ng WAV has data before its fmt chunk")
            pcm = data[body : min(len(data), body + size)]
            return pcm[: len(pcm) & ~1], rate
        pos = body + size + (size & 1)
    raise EspeakError("espeak-ng WAV has no data chunk")


class EspeakSynthesizer:
    """Synthesizes text with espeak-ng; one short-lived subprocess per call, never left running.

    ``synthesize`` returns (PCM16 mono, sample rate) or raises :class:`EspeakError`; on timeout or
    cancellation the subprocess is killed and reaped before returning.
    """

    MAX_TEXT = 4000  # characters per utterance; longer text is cut (a reply, not a book)

    def __init__(
        self,
        *,
        voice: str = "en-us",
        words_per_minute: int = 175,
        timeout_s: float = 10.0,
        espeak_path: str | None = None,
    ) -> None:
        if not voice or any(c.isspace() for c in voice) or voice.startswith("-"):
            raise ValueError(f"espeak voice must be a voice name like 'en-us', got {voice!r}")
        if not 80 <= int(words_per_minute) <= 450:
            raise ValueError(f"espeak words_per_minute must be in 80..450, got {words_per_minute}")
        if not timeout_s > 0:
            raise ValueError(f"espeak timeout_s must be > 0, got {timeout_s}")
        self.executable = find_espeak(espeak_path)
        self.voice = voice
        self.words_per_minute = int(words_per_minute)
        self.timeout_s = float(timeout_s)

    def argv(self) -> list[str]:
        return [self.executable, "--stdout", "--stdin", "-v", self.voice, "-s", str(self.words_per_minute)]

    async def synthesize(self, text: str) -> tuple[bytes, int]:
        text = " ".join(text.split())[: self.MAX_TEXT]
        if not text:
            return b"", 22050
        proc = await asyncio.create_subprocess_exec(
            *self.argv(),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            out, err = await asyncio.wait_for(proc.communicate(text.encode("utf-8")), self.timeout_s)
        except TimeoutError:
            raise EspeakError(f"espeak-ng did not finish within {self.timeout_s:g} s") from None
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        if proc.returncode != 0:
            msg = err.decode(errors="replace").strip()[-300:]
            raise EspeakError(f"espeak-ng exited {proc.returncode}: {msg or 'no message'}")
        return parse_wav(out)
