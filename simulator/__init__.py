"""aedsim: simulated AED cabinets running the real aedgate firmware on the host."""
import sys

from host_tools.firmware import FIRMWARE

# The simulator runs the very files that go onto the device: put them on the path.
if str(FIRMWARE) not in sys.path:
    sys.path.insert(0, str(FIRMWARE))
