# Runs first at every reset and soft reboot (also when mpremote or aedgate enter the raw REPL):
# lock and siren off before anything else, then the watchdog kept fed until the app feeds it.
# Nothing may escape: an exception here makes the ESP32 skip main.py (no app, no report).
try:
    import board

    board.boot()
except Exception as e:
    import sys

    sys.print_exception(e)
