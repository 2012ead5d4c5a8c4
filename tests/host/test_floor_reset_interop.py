"""host_tools mints the floor reset the firmware's gate accepts (docs/protocol.md, Time and clocks)."""
from aedgate.gate import Gate
from aedgate.storage import Flash
from host_tools import fleetkeys, signed_commands, tokens

MASTER = bytes(range(32))
DEV = "cab-0001"


def test_host_minted_reset_lowers_the_floor(tmp_path):
    key = fleetkeys.derive_device_key(MASTER, DEV)
    cfg = {"keys": [{"kid": "", "key": key.hex()}], "issuer": "dispatch", "max_window_s": 300,
           "iat_max_future_s": 3600}
    gate = Gate(Flash(str(tmp_path)), cfg, DEV)
    real = 1800000000
    lost_clock = 946684800 + 10
    gate.admit(tokens.mint(MASTER, DEV, "M-1", 60, now=real + 86400 * 365), "unlock", lost_clock)
    high = gate.floor.floor()
    assert high == real + 86400 * 365
    reset = signed_commands.mint_time(MASTER, DEV, now=real, reset_floor=high)
    gate.admit(reset, "time", lost_clock)
    assert gate.floor.floor() == real
    later = tokens.mint(MASTER, DEV, "M-2", 60, now=real + 5)
    assert gate.admit(later, "unlock", lost_clock)["mission"] == "M-2"
