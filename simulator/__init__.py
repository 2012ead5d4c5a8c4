"""aedsim: simulated AED cabinets running the real aedgate firmware on the host."""
import sys
from pathlib import Path

# The simulator runs the very files that go onto the device: put firmware/ on the path.
FIRMWARE = Path(__file__).resolve().parent.parent / "firmware"
if str(FIRMWARE) not in sys.path:
    sys.path.insert(0, str(FIRMWARE))
