"""Fixtures for the rollout tests: signed release folders built by the real `aedgate release`
commands (real mpy-cross), made once per session, and the keys the scripted cabinets trust."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from host_tools import releases
from host_tools.cli import main


@pytest.fixture(scope="session")
def release_kit(tmp_path_factory):
    """{"good": folder of 0.2.0 signed with the fleet's key, "stranger": the same manifest signed
    with a key no cabinet holds, "keys": [(kid, public)] as a cabinet's config has them,
    "pub": the public key file}."""
    d = tmp_path_factory.mktemp("rollout-release")
    key, other = d / "release.key", d / "other.key"
    assert main(["release", "keygen", "--out", str(key)]) == 0
    assert main(["release", "keygen", "--out", str(other)]) == 0
    good = d / "rel-0.2.0"
    assert main(["release", "build", "--version", "0.2.0", "--created", "1795000000",
                 "--out", str(good)]) == 0
    assert main(["release", "sign", "--key", str(key), str(good)]) == 0
    stranger = d / "rel-0.2.0-stranger"
    shutil.copytree(good, stranger)
    (stranger / "release.cose").unlink()
    assert main(["release", "sign", "--key", str(other), str(stranger)]) == 0
    unsigned = d / "rel-unsigned"
    shutil.copytree(good, unsigned)
    (unsigned / "release.cose").unlink()
    pub = releases.load_public(str(key) + ".pub")
    return {"good": good, "stranger": stranger, "unsigned": unsigned,
            "keys": [(releases.key_id(pub), pub)], "pub": Path(str(key) + ".pub"),
            "other_pub": Path(str(other) + ".pub")}
