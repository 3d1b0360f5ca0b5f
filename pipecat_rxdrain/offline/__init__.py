"""Offline reply services: a rule-based LLM and espeak-ng speech, as real Pipecat services.

With them a bot runs its full turn — STT → user aggregator → LLM → TTS → transport output — with no
account and no network, so the demo and the benchmarks can measure end of speech → first reply audio.
Wiring (in place of the cloud LLM and TTS, same positions in the pipeline)::

    llm = RuleBasedLLMService(rules=ReplyRules.default())        # LLMContextFrame -> LLMText frames
    tts = EspeakTTSService(voice="en-us")                          # text -> TTSAudioRawFrames at the pipeline rate
    Pipeline([transport.input(), rx, stt, user_agg, llm, tts, transport.output(), assistant_agg])

``EspeakTTSService`` raises :class:`EspeakNotFoundError` at construction when ``espeak-ng`` is not
installed (Debian: ``apt-get install espeak-ng``).
"""

from .espeak import EspeakError, EspeakNotFoundError, EspeakSynthesizer
from .llm import RuleBasedLLMService
from .rules import ReplyRule, ReplyRules
from .tts import EspeakTTSService

__all__ = [
    "EspeakError",
    "EspeakNotFoundError",
    "EspeakSynthesizer",
    "EspeakTTSService",
    "ReplyRule",
    "ReplyRules",
    "RuleBasedLLMService",
]
