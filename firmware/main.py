# Starts the cabinet application. A crash must never leave the lock driven or loop fast:
# outputs off, a pause, then a clean reset (reported as the next boot's cause). An installed
# update, or a release given up after its trial, ends the app on purpose
# (aedgate.update.Restart): outputs off and a reset, no pause.
import sys
import time

import board
import machine
from aedgate.compat import asyncio

hw, flash = board.setup()
try:
    # Imported here, inside the try: a release whose package fails to import (a slot on trial,
    # docs/updates-install.md) resets like any crash, so slots.py counts its hard boots and
    # rolls a crash loop back. At the top, the error would end main.py at the REPL, with
    # board.boot()'s timer feeding the watchdog for ever: a cabinet that never comes back.
    from aedgate.app import App

    asyncio.run(App(hw, flash).run())
except KeyboardInterrupt:
    # A technician at the REPL (Ctrl-C): stop here, outputs safe. A second Ctrl-C (pressed
    # twice; aedgate sends it again to a board that seems not to answer) must not cut this
    # short: it would leave an output on, or the watchdog unfed at the REPL.
    while True:
        try:
            hw.all_off()
            if hw.wdt:
                hw.wdt.hold_for_repl()
            break
        except KeyboardInterrupt:
            pass
except Exception as e:
    hw.all_off()
    upd = sys.modules.get("aedgate.update")  # loaded only by an offer; its Restart is not a fault
    if upd is not None and isinstance(e, upd.Restart):
        # A release is installed: update.py waited until the outbox had sent update_installed
        # (and everything before it) with no unlock window open, the lock is off: reset at once
        # into the new slot, on trial (docs/updates-install.md). Or a release on trial was given
        # up (App._trial): reset at once into the previous slot. No crash pause to wait out.
        print(e)
        machine.reset()
    sys.print_exception(e)
    time.sleep(10)
    machine.reset()
