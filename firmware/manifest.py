# Freezing aedgate into a custom ESP32 build (saves RAM: frozen bytecode runs from flash).
# Include this file from the board's manifest: include("path/to/aedgate/firmware/manifest.py").
# boot.py and main.py stay as files on the filesystem so a technician can replace them.
metadata(description="aedgate AED cabinet gateway firmware", version="0.1.0")
package("aedgate")
module("board.py")
module("slots.py")
