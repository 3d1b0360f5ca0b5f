"""Examples shipped with pipecat-rxdrain (the repository's ``examples/`` directory)."""
