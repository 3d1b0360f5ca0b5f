"""Local Google Speech-to-Text emulator: a real gRPC server for StreamingRecognize v1 and v2.

Quick use (sync or async tests; the server runs on its own thread and loop)::

    from pipecat_rxdrain.emulator import SpeechEmulator, EmulatorLimits, emulator_client

    with SpeechEmulator(script="hello_en") as emu:          # or: async with SpeechEmulator() as emu
        client = emulator_client(emu.address, api="v2")      # official, unmodified client
        ...                                                  # stream audio with client.streaming_recognize(...)
        emu.wait_for(lambda e: e.streams and e.streams[-1].ended, timeout=5)
        print(emu.streams[-1].transcripts)

``SpeechEmulator(host="127.0.0.1", port=0, *, script=None, recognizer="scripted",
limits=EmulatorLimits(max_stream_s=305, inactivity_timeout_s=10, max_request_bytes=25*1024,
strict_request_size=False), segmenter=SegmenterSettings(end_silence_ms=600, threshold_rms=250, ...),
interim_every_s=0.3, small_window=False, server_options=(), allow_remote=False,
timing=TimingProfile.FAST, seed=0)``

* ``start()``/``stop()`` (also ``with`` / ``async with``; ``await stop_async()``);
  ``address`` is ``"127.0.0.1:PORT"``; ``go_down(seconds)``; ``reset()``.
* Both ``google.cloud.speech.v1.Speech/StreamingRecognize`` and ``...v2...`` are served.
  The first request must carry the config (v2: a ``projects/*/locations/*/recognizers/*``
  recognizer and ``explicit_decoding_config`` LINEAR16/MULAW/ALAW 8-48 kHz, 1-8
  channels, or ``auto_decoding_config`` with a WAV header); errors are INVALID_ARGUMENT.
* Results: energy-based segmentation per 20 ms of decoded audio; interims (with
  ``stability``) every ``interim_every_s`` of speech when ``interim_results`` is set;
  one final per segment with ``result_end_time`` / ``result_end_offset`` = end of
  the segment's last speech frame, in audio seconds since the stream start; the
  language code is echoed (lower-cased, as Google does); v2/v1 voice activity events
  when enabled; open segments are finalized at a clean half-close (not on faults).
  Also honoured: ``enable_word_time_offsets``, ``max_alternatives``, ``single_utterance``,
  ``voice_activity_timeout`` (audio time; closes the stream with OK); v1 finals carry
  ``total_billed_time``, v2 responses ``metadata`` (request id, billed duration).
* Timing: ``TimingProfile.FAST`` (finals once the segment's end silence is heard, prefix
  interims) or ``GOOGLE`` (finals ~0.9 s median / 1.6 s p99 after end of speech, revised
  interims; seeded), see :mod:`.timing`.
* Transcripts: the n-th final of a recognition session is ``script[n]`` (default
  ``"utterance <n+1>"``). The session is the ``x-rxdrain-session`` metadata value
  (``SESSION_METADATA_KEY``) if sent, else the stream alone (``"stream-<id>"``). ``script`` is a list, a bundled sample name or a file.
  ``recognizer="pocketsphinx"`` decodes English offline instead (``recognizer`` extra).
* Faults: ``emu.faults.latency / stall / abort / close / refuse / down / clear`` —
  see :mod:`pipecat_rxdrain.emulator.faults` (one-shot by default, ``times=None`` persistent).
* Observation: ``emu.streams`` (snapshots of :class:`StreamRecord`: api, peer, session,
  metadata (credentials redacted), config dict, ``chunks`` (size, ``received_at``
  = server ``time.monotonic()`` on receipt, byte ``offset``), ``results``, ``stalls``,
  ``end`` (status code, details, reason)); ``emu.stream(-1)`` (one snapshot, cheap),
  ``emu.stream_count``; ``emu.wait_for(pred, timeout)`` / ``await emu.wait_for_async(...)``
  (bounded polling, ``TimeoutError``). ``emu.start_control(port)`` serves the runtime
  HTTP/JSON fault endpoint (see :mod:`pipecat_rxdrain.emulator.control`).
* ``small_window=True``: a stalled stream blocks the client after ~1-16 KB instead of the
  ~5 MB gRPC's default (BDP-grown) windows absorb; see ``SMALL_WINDOW_OPTIONS``.
* Limits: max stream duration (OUT_OF_RANGE ``Exceeded maximum allowed stream duration of
  305 seconds.``), inactivity (v1 OUT_OF_RANGE ``Audio Timeout Error: ...``, v2 ABORTED
  ``Stream timed out after receiving no more client requests.``); requests over 25 KB are
  counted (``oversize_requests``), rejected only with ``strict_request_size=True`` (Google
  accepts its own sample's 57958-byte request). Audio sent faster than real time is accepted, unless ``EmulatorLimits(max_lead_s=...)``: a stream
  whose audio gets further ahead of its wall clock fails with Google's OUT_OF_RANGE ``Audio data is
  being streamed too fast. Please stream audio data approximately at real time.``
* Client gotchas found with the official clients (google-cloud-speech 2.41): the v1
  ``SpeechClient.streaming_recognize(config, requests, metadata=...)`` helper silently
  drops ``metadata`` (call the generated ``speech_v1.services.speech.SpeechClient.
  streaming_recognize(client, requests=..., metadata=...)`` with the config first), and
  both clients retry UNAVAILABLE at stream open by default, re-using the half-consumed
  request iterator (the retry then starts with audio: INVALID_ARGUMENT) — pass
  ``retry=None`` and reconnect yourself. Send ``x-rxdrain-session`` to make several
  streams one recognition session (a call that reconnects).
* Google's clients ignore ``SPEECH_EMULATOR_HOST``: give them an insecure-channel transport,
  ``INSECURE_CHANNEL_RECIPE`` / ``insecure_channel_recipe(address)`` (sync and async, v1 and v2).
* CLI: ``rxdrain emulator --port 0 [--timing google --seed N] [--strict-request-size]`` prints
  that recipe for its address, then ``SPEECH_EMULATOR_HOST=127.0.0.1:PORT``.
"""

from pipecat_rxdrain.google_clients import (
    EMULATOR_ENV,
    INSECURE_CHANNEL_RECIPE,
    SESSION_METADATA_KEY,
    emulator_client,
    insecure_channel_recipe,
)

from .faults import FaultKind, Faults, status_code
from .recognizers import load_script
from .records import ChunkRecord, EndReason, ResultKind, ResultRecord, StreamEnd, StreamRecord
from .segmenter import SegmenterSettings
from .server import SMALL_WINDOW_OPTIONS, SpeechEmulator
from .stream import EmulatorLimits
from .timing import TimingProfile

__all__ = [
    "EMULATOR_ENV",
    "INSECURE_CHANNEL_RECIPE",
    "SESSION_METADATA_KEY",
    "SMALL_WINDOW_OPTIONS",
    "ChunkRecord",
    "EmulatorLimits",
    "EndReason",
    "FaultKind",
    "Faults",
    "ResultKind",
    "ResultRecord",
    "SegmenterSettings",
    "SpeechEmulator",
    "StreamEnd",
    "StreamRecord",
    "TimingProfile",
    "emulator_client",
    "insecure_channel_recipe",
    "load_script",
    "status_code",
]
