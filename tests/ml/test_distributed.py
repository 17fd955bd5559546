"""Multi-process training (DistributedDataParallel, gloo on CPU, 2 ranks): the same weights as one
process with the same global batch and seed, shards that keep the annotated share, a cancel that
stops every rank, and a dying rank that fails the run without writing a model."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest
import torch

from sage.distributed import DistributedBatchSampler, RankFailed, fit_distributed, shard_rows
from sage.training import Cancelled, fit

pytestmark = pytest.mark.slow


def _weights(path: Path) -> dict[str, torch.Tensor]:
    state = torch.load(path, weights_only=False)["model_state"]
    return {k: v.float() for k, v in state.items() if v.is_floating_point()}


def _relative_distance(a, b) -> float:
    num = sum(float((a[k] - b[k]).norm() ** 2) for k in a)
    return (num / sum(float(a[k].norm() ** 2) for k in a)) ** 0.5


def _gone(pid: int) -> bool:
    return not Path(f"/proc/{pid}").exists()


def test_shards_keep_the_annotated_share_and_cover_the_batch():
    annotated = torch.zeros(40, dtype=torch.bool)
    annotated[torch.arange(0, 40, 5)] = True  # 8 of 40
    rows = torch.randperm(40)[:16]
    shards = [rows[shard_rows(rows, annotated, r, 4)] for r in range(4)]
    assert sorted(torch.cat(shards).tolist()) == sorted(rows.tolist())
    assert max(len(s) for s in shards) - min(len(s) for s in shards) <= 1
    marked = [int(annotated[s].sum()) for s in shards]
    assert max(marked) - min(marked) <= 1 and sum(marked) == int(annotated[rows].sum())


def test_sampler_drops_a_last_batch_smaller_than_the_ranks(tiny_config):
    class Data:
        has_saliency = torch.zeros(35, dtype=torch.bool)

        def __len__(self):
            return 35

    sampler = DistributedBatchSampler(Data(), tiny_config(batch_size=16), rank=0, world=4)
    assert [len(b) for b in sampler.global_batches(1)] == [16, 16]  # the batch of 3 is dropped
    assert [
        len(b) for b in DistributedBatchSampler(Data(), tiny_config(batch_size=16), 0, 2).global_batches(1)
    ] == [16, 16, 3]


def test_two_ranks_reach_the_weights_of_one_process(shapes_dir, tiny_config, tmp_path):
    config = tiny_config(epochs=2, batch_size=16, seed=0)
    fit(config, shapes_dir, tmp_path / "one")
    fit(tiny_config(epochs=2, batch_size=16, seed=1), shapes_dir, tmp_path / "other-seed")
    events: list[dict] = []
    metrics = fit_distributed(config, shapes_dir, tmp_path / "two", world_size=2, progress=events.append)
    assert metrics["world_size"] == 2 and metrics["epochs_run"] == 2
    assert [e["epoch"] for e in events if e["val"] is not None] == [1, 2], "rank 0 reports each epoch once"
    one, two, other = (_weights(tmp_path / d / "model.pt") for d in ("one", "two", "other-seed"))
    assert one.keys() == two.keys()
    ddp = _relative_distance(one, two)
    seed = _relative_distance(one, other)
    # Per-rank batch-norm statistics are the only difference: far closer than another seed.
    assert ddp < 0.1 and ddp < seed / 5, (ddp, seed)
    assert not (tmp_path / "two" / ".ddp").exists()


def test_cancel_stops_every_rank(shapes_dir, tiny_config, tmp_path):
    pids: list[int] = []
    asked: list[float] = []

    def progress(event):
        if not asked:
            asked.append(time.monotonic())

    # A long grace: the ranks must stop by themselves (the flag), not be killed after the grace.
    with pytest.raises(Cancelled, match="every rank stopped"):
        fit_distributed(
            tiny_config(epochs=500, batch_size=8, progress_every=1),
            shapes_dir,
            tmp_path,
            world_size=2,
            progress=progress,
            should_cancel=lambda: bool(asked),
            started=pids.extend,
            cancel_grace_s=120,
        )
    assert time.monotonic() - asked[0] < 30  # seconds even on a loaded shared machine
    assert len(pids) == 2 and all(_gone(pid) for pid in pids)
    assert not (tmp_path / "model.pt").exists()


def test_a_dying_rank_fails_the_run(shapes_dir, tiny_config, tmp_path):
    pids: list[int] = []
    killed: list[float] = []

    def progress(event):
        if not killed:
            import os

            os.kill(pids[1], signal.SIGKILL)
            killed.append(time.monotonic())

    with pytest.raises(RankFailed, match="rank 1 of 2 was killed by SIGKILL"):
        fit_distributed(
            tiny_config(epochs=500, batch_size=8, progress_every=1),
            shapes_dir,
            tmp_path,
            world_size=2,
            progress=progress,
            started=pids.extend,
        )
    assert time.monotonic() - killed[0] < 10
    assert all(_gone(pid) for pid in pids)
    assert not (tmp_path / "model.pt").exists()


def test_refuses_what_cannot_work(shapes_dir, tiny_config, tmp_path):
    with pytest.raises(ValueError, match="world_size >= 2"):
        fit_distributed(tiny_config(), shapes_dir, tmp_path, world_size=1)
    with pytest.raises(ValueError, match="too small for 4 ranks"):
        fit_distributed(tiny_config(batch_size=6), shapes_dir, tmp_path, world_size=4)
