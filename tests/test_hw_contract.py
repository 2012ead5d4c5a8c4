"""The hardware contract (docs/hardware.md) checked against all three implementations: the test
hardware, the simulator's SimHardware, and firmware/board.py's Hardware running on the virtual
device (the MicroPython unix port with the ESP32 shims). The table in the doc is the contract;
this test only reads it."""
import inspect
import json
import re

from tests.fixtures import ROOT
from tests.integration.test_vdev import copy_firmware, mpremote, vdev_factory  # noqa: F401  (fixture)

DOC = ROOT / "docs" / "hardware.md"


def contract():
    """[(attribute, may_be_none, [(member, is_async)])] from the doc's Attributes table."""
    rows = []
    text = DOC.read_text().split("## Attributes", 1)[1]
    for line in text.splitlines():
        m = re.match(r"\| `(\w+)` \|\s*(yes|no)\s*\|([^|]*)\|", line)
        if not m:
            continue
        members = []
        for part in re.finditer(r"(\*async\* )?`(\w+)(\(|`)", m.group(3)):
            members.append((part.group(2), bool(part.group(1))))
        rows.append((m.group(1), m.group(2) == "yes", members))
    return rows


def problems(hw, check_async=True):
    out = []
    for name, may_be_none, members in contract():
        if not hasattr(hw, name):
            out.append("no %s" % name)
            continue
        value = getattr(hw, name)
        if value is None:
            if not may_be_none:
                out.append("%s is None" % name)
            continue
        for member, is_async in members:
            if not hasattr(value, member):
                out.append("%s has no %s" % (name, member))
            elif check_async and is_async and not inspect.iscoroutinefunction(getattr(value, member)):
                out.append("%s.%s is not async" % (name, member))
    return out


def test_the_doc_lists_the_contract():
    names = [r[0] for r in contract()]
    assert len(names) >= 18 and len(set(names)) == len(names), names
    for needed in ("door", "lock", "lock_timer", "net", "clock", "wdt", "tls_context", "reset_cause"):
        assert needed in names


def test_every_attribute_the_firmware_uses_is_in_the_contract():
    used = set()
    for path in (ROOT / "firmware" / "aedgate").glob("*.py"):
        src = path.read_text()
        used |= set(re.findall(r"\bhw\.(\w+)", src))
        used |= set(re.findall(r"getattr\(hw, \"(\w+)\"", src))
    missing = used - {r[0] for r in contract()}
    assert not missing, "used by the firmware, not in docs/hardware.md: %s" % sorted(missing)


def test_the_test_hardware_keeps_the_contract():
    from tests.firmware.fwtest import Hardware
    assert problems(Hardware()) == []


def test_the_simulator_keeps_the_contract():
    import asyncio

    from simulator.world.hardware import CabinetWorld, SimClock, SimHardware, SimWDT
    from simulator.world.net import SimNet

    async def build():
        world = CabinetWorld("cab-0001", SimClock(), SimNet())
        wdt = SimWDT(lambda: None)  # armed when made, as machine.WDT is: needs a running loop
        try:
            return problems(SimHardware(world, "power_on", wdt))
        finally:
            wdt.stop() if hasattr(wdt, "stop") else None
    assert asyncio.run(build()) == []


# On the board: the checker runs inside MicroPython (no inspect there: members only).
_BOARD_CHECK = """
import json, board
hw, flash = board.setup()
out = []
for name, may_be_none, members in json.loads(%r):
    if not hasattr(hw, name):
        out.append('no ' + name)
        continue
    v = getattr(hw, name)
    if v is None:
        if not may_be_none:
            out.append(name + ' is None')
        continue
    for m in members:
        if not hasattr(v, m):
            out.append(name + ' has no ' + m)
hw.all_off()
print('CONTRACT', json.dumps(out))
"""


def test_the_esp32_board_keeps_the_contract(vdev_factory):  # noqa: F811
    v = vdev_factory()
    r = copy_firmware(v.path, "board.py")
    assert r.returncode == 0, r.stdout + r.stderr
    spec = json.dumps([[n, none, [m for m, _ in members]] for n, none, members in contract()])
    r = mpremote(v.path, "exec", _BOARD_CHECK % spec, timeout=60)
    line = [ln for ln in r.stdout.splitlines() if ln.startswith("CONTRACT ")]
    assert line, r.stdout + r.stderr
    assert json.loads(line[0][9:]) == []
