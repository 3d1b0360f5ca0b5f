"""Deprecated alias of :mod:`pipecat_rxdrain.rx.processor` (RX moved into the ``pipecat_rxdrain.rx`` package)."""

from .rx import alias_moved_module

alias_moved_module(__name__, "processor")
