"""Tests of host_tools.backend, `aedgate registry` and the broker options of every host tool, on real Mosquitto with real paho publishers."""
