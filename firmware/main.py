# Starts the cabinet application. A crash must never leave the lock driven or loop fast:
# outputs off, a pause, then a clean reset (reported as the next boot's cause).
import sys
import time

import board
import machine
from aedgate.app import App
from aedgate.compat import asyncio

hw, flash = board.setup()
try:
    asyncio.run(App(hw, flash).run())
except KeyboardInterrupt:
    hw.all_off()  # a technician at the REPL (Ctrl-C): stop here, outputs safe
    if hw.wdt:
        hw.wdt.hold_for_repl()
except Exception as e:
    hw.all_off()
    sys.print_exception(e)
    time.sleep(10)
    machine.reset()
