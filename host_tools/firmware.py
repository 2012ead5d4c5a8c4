"""Where the device's files are: the `firmware/` folder of a source checkout, or the copy that
`pip install` put beside the host tools (package `aedgate_firmware`, the same files as data)."""
from __future__ import annotations

import importlib.util
from pathlib import Path


def firmware_dir() -> Path:
    """The folder holding boot.py, main.py, board.py, package.json and the aedgate package."""
    checkout = Path(__file__).resolve().parents[1] / "firmware"
    if (checkout / "package.json").is_file():
        return checkout
    spec = importlib.util.find_spec("aedgate_firmware")
    if spec is not None and spec.submodule_search_locations:
        for where in spec.submodule_search_locations:
            if (Path(where) / "package.json").is_file():
                return Path(where)
    raise FileNotFoundError("the aedgate firmware files are missing: reinstall aedgate "
                            "(pip install aedgate) or run from a source checkout")


FIRMWARE = firmware_dir()
