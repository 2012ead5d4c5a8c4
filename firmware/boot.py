# Runs first at every reset and soft reboot (also when mpremote or aedgate enter the raw REPL):
# lock and siren off before anything else, then the watchdog kept fed until the app feeds it.
# Nothing may escape: an exception here makes the ESP32 skip main.py (no app, no report).
try:
    import board

    board.boot()
except Exception as e:
    import sys

    sys.print_exception(e)
# Then the app slot (slots.py, docs/updates-install.md): its folder goes first on sys.path, and
# what board.py imported from the root's package is forgotten so the slot's own is imported.
# Any failure here leaves the root's package: it is always complete.
try:
    import sys

    import machine
    from aedgate.storage import Flash
    from slots import Slots

    _slot = Slots(Flash("/")).boot(machine.reset_cause() != machine.SOFT_RESET)
    if _slot:
        for _m in [m for m in sys.modules if m == "board" or m.split(".")[0] == "aedgate"]:
            del sys.modules[_m]
        sys.path.insert(0, "/" + _slot)
except Exception as e:
    import sys

    sys.print_exception(e)
