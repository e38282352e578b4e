"""Two-process DDP on CPU (Lightning's own strategy, gloo): positions stay identical on every rank,
frozen together during warm-up and learning together after it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

WORKER = Path(__file__).with_name("ddp_worker.py")
WARMUP_STEPS, MAX_STEPS = 2, 4


def test_two_process_ddp_keeps_positions_identical_across_ranks(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK")}
    result = subprocess.run(
        [sys.executable, str(WORKER), str(tmp_path)], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    # history[0]: before training; history[s]: after optimizer step s.
    assert len(ranks[0]) == len(ranks[1]) == MAX_STEPS + 1
    for step in range(MAX_STEPS + 1):
        for a, b in zip(ranks[0][step], ranks[1][step]):
            assert torch.equal(a, b), f"ranks disagree on positions after step {step}"
    initial = ranks[0][0]
    for step in range(1, WARMUP_STEPS + 1):
        assert all(torch.equal(a, b) for a, b in zip(ranks[0][step], initial)), f"moved in warm-up step {step}"
    assert not all(torch.equal(a, b) for a, b in zip(ranks[0][-1], initial)), "positions learn after warm-up"
