"""The one unit RX and STT count queued audio in.

Queue bounds, watermarks, drops and ``AudioSink.audio_backlog()`` are audio
durations expressed in 20 ms-frame equivalents (one Twilio Media Streams frame),
so ``max_queue=200`` means 4 s of audio whatever size the chunks are.
"""

FRAME_UNIT_MS = 20.0
