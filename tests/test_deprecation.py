"""0.1.0's ``Stt...`` names still import, warn, and are the same objects as the ``STT...`` names."""

from __future__ import annotations

import importlib

import pytest

from pipecat_rxdrain.deprecation import STT_RENAMES

WHERE = [
    ("pipecat_rxdrain.stt", "SttError"),
    ("pipecat_rxdrain.stt", "SttResult"),
    ("pipecat_rxdrain.stt", "SttStats"),
    ("pipecat_rxdrain.stt", "SttSessionParams"),
    ("pipecat_rxdrain.stt.session", "SttStats"),
    ("pipecat_rxdrain.stt.params", "SttSessionParams"),
    ("pipecat_rxdrain.stt.io_thread", "SttIoThread"),
    ("pipecat_rxdrain.pipeline_metrics", "SttMetricsData"),
]


@pytest.mark.parametrize("module,old", WHERE)
def test_an_old_name_warns_and_is_the_new_object(module, old):
    mod = importlib.import_module(module)
    new = getattr(mod, STT_RENAMES[old])
    with pytest.warns(DeprecationWarning, match=f"{old} is now {STT_RENAMES[old]}"):
        assert getattr(mod, old) is new


def test_unknown_names_still_raise_attribute_error():
    mod = importlib.import_module("pipecat_rxdrain.stt.session")
    with pytest.raises(AttributeError):
        mod.SttNothing  # noqa: B018
    with pytest.raises(AttributeError):
        importlib.import_module("pipecat_rxdrain.stt").NoSuchThing  # noqa: B018


def test_no_module_of_the_package_still_spells_the_old_stem():
    from pathlib import Path

    root = Path(importlib.import_module("pipecat_rxdrain").__file__).parent
    offenders = [
        f"{p.relative_to(root)}: {old}"
        for p in root.rglob("*.py")
        if p.name != "deprecation.py"
        for old in STT_RENAMES
        if old in p.read_text()
    ]
    assert offenders == []
