# Runs first on every reset: make sure the lock and siren are off before anything else runs.
import board

board.outputs_off()
