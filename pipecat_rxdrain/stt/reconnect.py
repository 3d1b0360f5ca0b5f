"""When a broken STT stream is reopened, and when the session gives up (no gRPC calls, only status codes)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import grpc

from .backoff import Backoff

# Errors that no retry can fix: bad request or configuration, missing permission. Everything
# else (UNAVAILABLE, ABORTED incl. v2's "Stream timed out", OUT_OF_RANGE incl. the 305 s cut,
# DEADLINE_EXCEEDED, INTERNAL, RESOURCE_EXHAUSTED, UNKNOWN, CANCELLED by the server) is retried.
FATAL_CODES = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.ALREADY_EXISTS,
    }
)


class Verdict(Enum):
    RETRY = "retry"  # reopen after ``delay_s``
    FATAL = "fatal"  # non-retriable: stop the session
    GIVE_UP = "give_up"  # retriable, but ``max_consecutive_failures`` in a row


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    delay_s: float = 0.0
    failures: int = 0  # consecutive failed attempts, this one included


class ReconnectPolicy:
    """Classifies a stream's error and decides whether and when to reopen.

    Guarantees: a code in ``FATAL_CODES`` (or no code at all: not a gRPC error) is
    FATAL at once, never retried; other codes are retried with ``backoff``'s capped,
    jittered delays; ``max_consecutive_failures`` failures in a row (0: never) give
    up. A stream that was healthy (it got a response, or lived long enough) resets
    both the count and the backoff, so an error after a good stream starts over from
    the shortest delay.
    """

    def __init__(self, backoff: Backoff | None = None, max_consecutive_failures: int = 12) -> None:
        if max_consecutive_failures < 0:
            raise ValueError(f"max_consecutive_failures must be >= 0, got {max_consecutive_failures}")
        self.backoff = backoff or Backoff()
        self.max_consecutive_failures = max_consecutive_failures
        self.failures = 0

    @staticmethod
    def is_fatal(code: grpc.StatusCode | None) -> bool:
        return code is None or code in FATAL_CODES

    def on_error(self, code: grpc.StatusCode | None, *, stream_was_healthy: bool) -> Decision:
        if stream_was_healthy:
            self.healthy()
        if self.is_fatal(code):
            return Decision(Verdict.FATAL, failures=self.failures + 1)
        self.failures += 1
        if self.max_consecutive_failures and self.failures >= self.max_consecutive_failures:
            return Decision(Verdict.GIVE_UP, failures=self.failures)
        return Decision(Verdict.RETRY, self.backoff.next_delay(), self.failures)

    def healthy(self) -> None:
        """A stream worked (or ended cleanly): the next error starts over."""
        self.failures = 0
        self.backoff.reset()
