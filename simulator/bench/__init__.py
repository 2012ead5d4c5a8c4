"""Benchmarks and soak runs (own commands, never part of `make test`): fleet scale against real brokers, latency, the long soak."""
