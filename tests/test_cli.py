"""The ``rxdrain`` entry point: ``--version`` names the package version, unknown commands are rc 2."""

from __future__ import annotations

import pipecat_rxdrain
from pipecat_rxdrain.cli import main


def test_version_prints_the_package_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"rxdrain {pipecat_rxdrain.__version__}"


def test_unknown_command_is_rc2_with_usage(capsys):
    assert main(["nope"]) == 2
    assert "unknown command 'nope'" in capsys.readouterr().err
