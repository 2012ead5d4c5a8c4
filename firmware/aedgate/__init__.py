# aedgate: gateway firmware for locked public AED cabinets.
VERSION = "0.1.0"
