"""Many simulated cabinets: one process's fleet runner, worker processes for large fleets, workloads, the fleet observer and its live table."""
