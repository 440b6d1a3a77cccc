"""load.sampler and the progress line of a running load."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

from pet_harness.load.runner import progress_line
from pet_harness.load.sampler import Sample, Sampler


def test_progress_is_told_every_so_often_with_the_newest_sample() -> None:
    told: list[Sample] = []
    enough = threading.Event()

    def progress(sample: Sample) -> None:
        told.append(sample)
        if len(told) >= 2:
            enough.set()

    sampler = Sampler(os.getpid(), lambda: 7, interval=0.01, progress=progress, progress_every=0.05).start()
    try:
        assert enough.wait(10)
    finally:
        samples = sampler.stop()
    assert told[0].pets == 7
    assert told[0].rss_mb is not None and told[0].rss_mb > 0
    assert len(samples) > len(told)  # not every sample is told


def test_a_failing_progress_callback_does_not_stop_the_sampling() -> None:
    def broken(sample: Sample) -> None:
        raise RuntimeError("terminal gone")

    sampler = Sampler(None, lambda: 1, interval=0.01, progress=broken, progress_every=0.0).start()
    try:
        for _ in range(500):
            if len(sampler.samples) >= 5:
                break
            threading.Event().wait(0.01)
    finally:
        samples = sampler.stop()
    assert len(samples) >= 5


def test_the_progress_line_names_pets_memory_and_the_last_step(tmp_path: Path) -> None:
    steps = tmp_path / "steps.json"
    sample = Sample(at=45.2, rss_mb=88.4, cpu_percent=41.0, pets=1234)
    assert progress_line("ours", sample, steps) == "[ours] 45 s: 1234 pets, RSS 88 MB, CPU 41 %"
    steps.write_text(json.dumps({"steps": [{"target_rate": 10.0, "p99": 0.2}, {"target_rate": 20.0, "p99": 0.4}]}))
    line = progress_line("raw", Sample(10, None, None, None), steps)
    assert line == "[raw] 10 s: ? pets, last step 20.0/s: p99 0.4 s"


def test_cpu_shares_are_percent_of_one_core_over_the_load() -> None:
    from pet_harness.load.runner import cpu_shares

    before = {"operator": 10.0, "kube-apiserver": 100.0, "etcd": None, "machine": 1000.0}
    after = {"operator": 15.0, "kube-apiserver": 112.0, "etcd": 3.0, "machine": 1036.0}
    assert cpu_shares(before, after, 20.0) == {"operator": 25.0, "kube-apiserver": 60.0, "machine": 180.0}


def test_machine_cpu_seconds_grow_with_work() -> None:
    from pet_harness.load.sampler import machine_cpu_seconds

    first = machine_cpu_seconds()
    sum(i * i for i in range(2_000_000))
    second = machine_cpu_seconds()
    assert first is not None and second is not None and second > first


def test_the_busiest_window_is_where_the_machine_worked_most() -> None:
    from pet_harness.load.sampler import busiest

    def at(second: int, machine: float, apiserver: float, operator: float) -> Sample:
        return Sample(second, 80.0, operator, 10, {"machine": machine, "kube-apiserver": apiserver})

    samples = [at(i, 50.0, 20.0, 10.0) for i in range(20)] + [at(20 + i, 190.0, 120.0, 60.0) for i in range(10)]
    samples += [at(30 + i, 40.0, 10.0, 5.0) for i in range(20)]
    top = busiest(samples)
    assert top == {"kube-apiserver": 120.0, "machine": 190.0, "operator": 60.0, "from_second": 20}
    assert busiest(samples[:5]) == {}


def test_other_processes_are_sampled_too() -> None:
    sampler = Sampler(None, lambda: None, interval=0.01, others={"me": os.getpid(), "gone": None}).start()
    try:
        for _ in range(500):
            if len(sampler.samples) >= 3:
                break
            threading.Event().wait(0.01)
    finally:
        samples = sampler.stop()
    assert set(samples[-1].others) == {"me", "machine"}
