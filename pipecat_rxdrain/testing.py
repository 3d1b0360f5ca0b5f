"""Test helpers that ship with the package (for its own tests and for users' tests).

``FakeClock`` is a :data:`pipecat_rxdrain.clock.Clock` that only moves when told to.
``fake_service_account_info`` / ``fake_service_account_json`` give a syntactically valid
Google service-account key with a fresh RSA key, never sent anywhere, so code that parses
credentials (ours, or stock Pipecat's) can be built offline. They need ``cryptography``
(in the ``dev`` and ``bench`` extras).
"""

from __future__ import annotations

import functools
import json
from typing import Any

__all__ = ["FakeClock", "fake_service_account_info", "fake_service_account_json"]


@functools.cache
def _private_key_pem() -> str:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)  # one per process: generating is slow
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return pem.decode()


def fake_service_account_info(project_id: str = "rxdrain-test", **overrides: Any) -> dict[str, Any]:
    """A service-account key as a dict (``overrides`` replace or add fields, e.g. a broken ``private_key``)."""
    info: dict[str, Any] = {
        "type": "service_account",
        "project_id": project_id,
        "private_key_id": "0123456789abcdef0123456789abcdef01234567",
        "private_key": _private_key_pem(),
        "client_email": f"bot@{project_id}.iam.gserviceaccount.com",
        "client_id": "1234567890",
        "token_uri": "https://oauth2.googleapis.com/token",
    }
    info.update(overrides)
    return info


def fake_service_account_json(project_id: str = "rxdrain-test", **overrides: Any) -> str:
    """:func:`fake_service_account_info` as the JSON text a credentials file or env setting holds."""
    return json.dumps(fake_service_account_info(project_id, **overrides))


class FakeClock:
    """A manually advanced clock for deterministic tests.

    Guarantees: time never goes backwards; it only moves when ``advance`` or
    ``set`` is called.
    """

    def __init__(self, start: float = 0.0) -> None:
        self._now = float(start)

    def __call__(self) -> float:
        return self._now

    @property
    def now(self) -> float:
        return self._now

    def advance(self, seconds: float) -> float:
        if seconds < 0:
            raise ValueError(f"cannot advance a clock by a negative amount ({seconds})")
        self._now += seconds
        return self._now

    def set(self, when: float) -> float:
        if when < self._now:
            raise ValueError(f"cannot move a clock backwards ({when} < {self._now})")
        self._now = float(when)
        return self._now
