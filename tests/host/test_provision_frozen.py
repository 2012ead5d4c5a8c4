"""`aedgate provision` and a board with the firmware frozen into its MicroPython build: the full
mode refuses to shadow it, --config-only removes copies that would. (A frozen build does not
run here; the vdev side of both modes is in tests/integration/test_provision.py.)"""
import pytest

from host_tools.cli import CliError
from host_tools.commands import provision


def test_the_full_mode_refuses_a_board_with_aedgate_frozen_in():
    with pytest.raises(CliError) as e:
        provision.check_frozen("0.1.0", config_only=False)
    msg = str(e.value)
    assert "frozen" in msg and "--config-only" in msg and "\n" not in msg
    provision.check_frozen("0.1.0", config_only=True)
    provision.check_frozen(None, config_only=False)


def test_shadowing_copies_are_every_frozen_module_in_both_forms():
    _, files = provision.firmware_files(False, None)
    paths = provision.shadowing(files)
    assert "board.py" in paths and "board.mpy" in paths and "aedgate/app.mpy" in paths
    assert "boot.py" not in paths and "main.py" not in paths  # never frozen: run by name
