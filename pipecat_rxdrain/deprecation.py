"""Old names that still import, with a DeprecationWarning: the one place the package keeps them."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from typing import Any

#: 0.1.0 spelled the STT names with an ``Stt`` stem; Pipecat (``STTService``) and the rest
#: of the package spell ``STT``. Old name -> new name, in every module that defined it.
STT_RENAMES: Mapping[str, str] = {
    "SttError": "STTError",
    "SttResult": "STTResult",
    "SttStats": "STTStats",
    "SttSessionParams": "STTSessionParams",
    "SttIoThread": "STTIoThread",
    "SttMetricsData": "STTMetricsData",
}


def renamed_attributes(module_name: str, namespace: dict[str, Any], renames: Mapping[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` serving ``renames``' old names (with a warning) from ``namespace``.

    Only the old names whose new name ``namespace`` defines are served; anything else raises
    ``AttributeError`` as a module without ``__getattr__`` would.
    """

    def __getattr__(name: str) -> Any:
        new = renames.get(name)
        if new is None or new not in namespace:
            raise AttributeError(f"module {module_name!r} has no attribute {name!r}")
        warnings.warn(f"{module_name}.{name} is now {new}", DeprecationWarning, stacklevel=2)
        return namespace[new]

    return __getattr__
