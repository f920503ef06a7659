"""Every shipped preset passes the checks `train` runs before any weights load (options, rules, layouts)."""

from pathlib import Path

import pytest

from vlalign.config import load_config
from vlalign.train.checks import check_config

PRESETS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


def test_there_are_presets_to_check():
    assert len(PRESETS) >= 6


@pytest.mark.parametrize("preset", PRESETS, ids=lambda path: path.name)
def test_shipped_preset_passes_the_config_checks(preset):
    check_config(load_config(preset))
