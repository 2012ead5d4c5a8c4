"""`aedsim rollout`'s device order: every wave (the canary too) is spread over the worker
processes, each of which holds a contiguous slice of ids; in sorted order the first half of a
rollout ran on one worker while the other idled."""
from simulator.bench.rollout_run import spread_over_workers
from simulator.fleet.workers import slices


def test_each_wave_prefix_takes_cabinets_from_every_worker_evenly():
    for cabinets, workers in ((1000, 2), (1001, 3), (7, 4), (5, 1)):
        order = spread_over_workers(cabinets, workers)
        assert sorted(order) == ["cab-%04d" % n for n in range(1, cabinets + 1)]
        owner = {}
        for w, (first, count) in enumerate(slices(cabinets, workers)):
            for n in range(first, first + count):
                owner["cab-%04d" % n] = w
        for k in (workers, 10, cabinets // 10, cabinets // 2):  # canary, 1 %, 10 %, 50 %
            share = [0] * workers
            for d in order[:k]:
                share[owner[d]] += 1
            assert max(share) - min(share) <= 1, (cabinets, workers, k, share)
