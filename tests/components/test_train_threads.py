"""How many CPU threads training takes: one for a small network, the process's share of the CPUs for a large one."""

from __future__ import annotations

import numpy as np
import pytest

from kfops.components.contracts import TrainConfig
from kfops.components.train import loop


@pytest.fixture
def eight_cpus(monkeypatch):
    monkeypatch.setattr(loop, "cpu_limit", lambda: 8)


def test_the_default_network_trains_on_one_thread(eight_cpus):
    config = TrainConfig()
    assert loop.cpu_threads(45, config.hidden_sizes, 1, config.batch_size) == 1


def test_a_large_network_takes_a_thread_per_cpu(eight_cpus):
    assert loop.cpu_threads(45, [1024, 512], 1, 512) == 8
    assert loop.cpu_threads(45, [1024, 512], 1, 512, processes=2) == 4  # torchrun: 2 ranks on this node
    assert loop.cpu_threads(45, [1024, 512], 1, 512, processes=16) == 1


def test_the_rule_counts_every_layer_and_the_batch(eight_cpus):
    # 45*64 + 64*32 + 32*1 = 4,960 multiply-adds a row: one thread below the bound, all of them above it
    rows_at_bound = loop.SMALL_STEP_MACS // 4960
    assert loop.cpu_threads(45, [64, 32], 1, rows_at_bound) == 1
    assert loop.cpu_threads(45, [64, 32], 1, rows_at_bound + 1) == 8


def test_fit_sets_the_threads_it_chose(eight_cpus):
    import torch

    before = torch.get_num_threads()
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(256, 6)).astype(np.float32), (rng.random(256) < 0.5).astype(np.float32)
    try:
        torch.set_num_threads(2)
        loop.fit(x, y, x[:64], y[:64], TrainConfig(hidden_sizes=[8], epochs=1, device="cpu"))
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
