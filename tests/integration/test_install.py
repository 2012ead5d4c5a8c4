"""A plain, non-editable `pip install .` gives working `aedgate` and `aedsim`: the firmware files
travel as package data, so provisioning a (virtual) board works from the installed copy alone,
far from the source tree. Installed with --no-deps and without build isolation: the venv already
has the dependencies and setuptools, and a test never reaches beyond loopback."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from host_tools import fleetkeys
from tests.integration.test_provision import DEVICE

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    target = tmp_path_factory.mktemp("site")
    r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                        "--target", str(target), str(ROOT)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    return target


def run(installed, cwd, *args, timeout=120):
    env = dict(os.environ, PYTHONPATH=str(installed))
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_installed_copy_is_used_and_carries_the_firmware(installed, tmp_path):
    r = run(installed, tmp_path, "-c", "import host_tools, simulator; from host_tools.firmware import FIRMWARE; "
            "print(host_tools.__file__); print(simulator.__file__); print(FIRMWARE)")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.split()
    assert all(line.startswith(str(installed)) for line in lines), lines
    fw = Path(lines[2])
    pkg = json.loads((fw / "package.json").read_text())
    for _, src in pkg["urls"]:
        assert (fw / src).is_file(), src
    assert (installed / "simulator" / "vdev" / "shims" / "machine.py").is_file()
    assert list((installed / "simulator" / "world" / "scenarios").glob("*.json"))
    for cli in ("host_tools.cli", "simulator.cli"):
        h = run(installed, tmp_path, "-m", cli, "--help")
        assert h.returncode == 0 and "usage:" in h.stdout, h.stderr


def test_installed_copy_provisions_a_virtual_board(installed, tmp_path, mosquitto, backend):
    key = tmp_path / "fleet.key"
    fleetkeys.save(key, fleetkeys.generate())
    flash = tmp_path / "flash"
    flash.mkdir()
    env = dict(os.environ, PYTHONPATH=str(installed))
    vdev = subprocess.Popen([sys.executable, "-m", "simulator.cli", "vdev", "--flash-dir", str(flash),
                             "--device-id", DEVICE], cwd=tmp_path, env=env, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=open(tmp_path / "vdev.log", "ab"), text=True)
    try:
        port = vdev.stdout.readline().strip()
        assert port.startswith("/dev/pts/"), (port, (tmp_path / "vdev.log").read_text())
        r = run(installed, tmp_path, "-m", "host_tools.cli", "provision", "--port", port, "--device-id", DEVICE,
                "--broker", mosquitto.url, "--fleet-key", str(key), "--wifi-ssid", "lab",
                "--wifi-password", "secret", timeout=180)
        assert r.returncode == 0, r.stdout + r.stderr
        # The board was reset: the installed firmware runs and the cabinet comes online.
        backend.wait_for(lambda t, o: t == "aed/v1/%s/status" % DEVICE and o.get("online") is True, 30)
    finally:
        vdev.terminate()
        vdev.wait(10)
