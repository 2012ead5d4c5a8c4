"""Staged rollouts of a signed release to the fleet (issue 12; docs/updates.md, "Rolling out").

- release.py — ServedRelease: a signed release folder, checked and held in memory
- blocks.py — BlockServer: answers update/get with update/block, refuses bad gets
- plan.py — Plan (canary, waves, rate, halt threshold, wave timeout), RateLimiter
- store.py — RolloutStore: the rollout's state in SQLite (WAL), shared with pause/abort/status
- controller.py — Rollout: the controller as a library (`start()`, `step()`, `run()`)
- report.py — status and fleet-version reports from the database

    from host_tools.rollout import Plan, Rollout
    ro = Rollout("rollout.db", "rel-0.2.0", Plan(canary=10), shards).start()
    ro.run()
"""
from host_tools.rollout.controller import Rollout, RolloutError
from host_tools.rollout.plan import Plan, PlanError, RateLimiter
from host_tools.rollout.release import ReleaseDirError, ServedRelease, release_id
from host_tools.rollout.blocks import BlockServer
from host_tools.rollout.store import RolloutStore, StoreError

__all__ = ["Rollout", "RolloutError", "Plan", "PlanError", "RateLimiter", "ReleaseDirError",
           "ServedRelease", "release_id", "BlockServer", "RolloutStore", "StoreError"]
