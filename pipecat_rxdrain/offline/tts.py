"""``EspeakTTSService``: a Pipecat TTS service speaking with the local ``espeak-ng`` program."""

from __future__ import annotations

from collections.abc import AsyncGenerator

from loguru import logger
from pipecat.audio.utils import create_file_resampler
from pipecat.frames.frames import ErrorFrame, Frame, TTSAudioRawFrame
from pipecat.services.settings import TTSSettings
from pipecat.services.tts_service import TTSService

from .espeak import EspeakError, EspeakSynthesizer


class EspeakTTSService(TTSService):
    """Text-to-speech with espeak-ng in a subprocess, resampled to the pipeline's output rate.

    Guarantees: construction fails with :class:`EspeakNotFoundError` when espeak-ng is missing (not
    at the first reply); each utterance runs one bounded subprocess (``timeout_s``), killed on
    timeout or interruption; audio comes out as ``TTSAudioRawFrame``s (16-bit mono at
    ``self.sample_rate``, the pipeline's ``audio_out_sample_rate`` unless ``sample_rate=`` is given)
    between the ``TTSStartedFrame``/``TTSStoppedFrame`` the base class adds; a failure is one
    ``ErrorFrame`` for that utterance, never an exception out of the pipeline.
    """

    def __init__(self, *, voice: str | None = None, synthesizer: EspeakSynthesizer | None = None, **kwargs) -> None:
        """``voice`` (default ``en-us``) or a configured ``synthesizer`` (voice, speed, timeout, program path),
        not both; other keyword arguments go to Pipecat's ``TTSService``."""
        if synthesizer is not None and voice is not None:
            raise ValueError("give EspeakTTSService a voice or a synthesizer (which has its voice), not both")
        self._synth = synthesizer if synthesizer is not None else EspeakSynthesizer(voice=voice or "en-us")
        store = TTSSettings(
            model=None, voice=self._synth.voice, language=None
        )  # every field initialized, as Pipecat expects
        super().__init__(push_start_frame=True, push_stop_frames=True, settings=store, **kwargs)
        self._file_resampler = create_file_resampler()

    @property
    def synthesizer(self) -> EspeakSynthesizer:
        return self._synth

    def can_generate_metrics(self) -> bool:
        return True

    async def run_tts(self, text: str, context_id: str) -> AsyncGenerator[Frame | None, None]:
        try:
            await self.start_tts_usage_metrics(text)
            pcm, rate = await self._synth.synthesize(text)
        except EspeakError as e:
            logger.warning(f"{self}: {e}")
            yield ErrorFrame(error=f"espeak-ng: {e}")
            return
        finally:
            await self.stop_ttfb_metrics()
        if rate != self.sample_rate and pcm:
            pcm = await self._file_resampler.resample(pcm, rate, self.sample_rate)
        step = max(2, self.chunk_size & ~1)
        for i in range(0, len(pcm), step):
            yield TTSAudioRawFrame(pcm[i : i + step], self.sample_rate, 1, context_id=context_id)
