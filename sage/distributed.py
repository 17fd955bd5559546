"""Multi-process training with DistributedDataParallel: `fit_distributed` runs one training run on
`world_size` ranks (one per GPU with NCCL, or CPU processes with gloo) and returns what `fit` returns.

The caller's process (a training worker's run process) starts the ranks as child processes
(`python -m sage.distributed`), relays rank 0's progress events to `progress`, and turns
`should_cancel()` into a flag file every rank reads; the ranks agree on it with one all-reduce per
step, so a cancel stops every rank at the same step within seconds. A rank that exits with an error
or is killed makes the caller stop the other ranks at once and raise `RankFailed`: nothing is
written to `out_dir/model.pt`, so the run fails cleanly.

Same optimisation as one device: every rank builds the same global batch of `config.batch_size`
rows (`epoch_batches`, with its annotated share), augments it with the same random draws as a single
process would, and keeps its own shard: annotated and other rows are dealt round-robin, so each
rank's shard keeps the batch's annotated share (to one image) and the shards' sizes differ by at most
one. Each rank's loss is weighted by its share of the batch, so DDP's gradient average equals the
gradient of the global batch mean; the learning rate and schedule are those of a single device with
the same global batch. Batch-norm statistics are per rank (as with torchvision's references without
--sync-bn), and random views drawn inside a method differ per rank, so weights match one process to
a tolerance, not bit for bit. Rank 0 alone validates, writes checkpoints and model.pt, and reports
progress.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import math
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from sage.config import TrainConfig
from sage.methods import Batch
from sage.training import (
    Cancelled,
    ProgressFn,
    _atomic_save,
    _epoch_seed,
    _event,
    _final_metrics,
    build_optimizer,
    build_task,
    epoch_batches,
    prepare_data,
    resolve_device,
    save_model,
    seed_everything,
    to_batch,
    validation_loss,
)

EVENT_PREFIX = "SAGE-EVENT "
CANCEL_FILE = "cancel"
METRICS_FILE = "ddp-metrics.pt"
EXIT_CANCELLED = 3


class RankFailed(RuntimeError):
    """A rank exited with an error or was killed; the other ranks were stopped."""


# --- the sampler ----------------------------------------------------------------------------------


def shard_rows(rows: torch.Tensor, annotated: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    """Positions (into `rows`) of this rank's share of a global batch: annotated rows first, then
    the others, dealt round-robin, so every shard keeps the batch's annotated share (to one image)."""
    marked = annotated[rows]
    order = torch.cat([marked.nonzero().flatten(), (~marked).nonzero().flatten()])
    return order[rank::world]


class DistributedBatchSampler:
    """The global batches of an epoch (`epoch_batches`: same on every rank, seeded by the epoch)
    and this rank's shard of each. A global batch smaller than the number of ranks (only a last
    one can be) is dropped so no rank ever gets an empty shard."""

    def __init__(self, data: Any, config: TrainConfig, rank: int, world: int) -> None:
        self.data = data
        self.config = config
        self.rank = rank
        self.world = world

    def global_batches(self, epoch: int) -> list[torch.Tensor]:
        chunks = epoch_batches(self.data, self.config, _epoch_seed(self.config.seed, epoch))
        return [rows for rows in chunks if len(rows) >= self.world]

    def shard(self, rows: torch.Tensor) -> torch.Tensor:
        return shard_rows(rows, self.data.has_saliency, self.rank, self.world)


# --- the caller's side ----------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _die_with_parent() -> None:  # runs in the rank between fork and exec
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _stop(procs: list[subprocess.Popen], grace_s: float) -> None:
    for proc in procs:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
    deadline = time.monotonic() + grace_s
    for proc in procs:
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait(timeout=10)


def _tail(path: Path, limit: int = 1500) -> str:
    try:
        text = path.read_text(errors="replace").strip()
    except FileNotFoundError:
        return ""
    lines = [line for line in text.splitlines() if line.strip()]
    return "\n".join(lines[-8:])[-limit:]


def fit_distributed(
    config: TrainConfig,
    data_dir: str | Path,
    out_dir: str | Path,
    *,
    world_size: int,
    progress: ProgressFn | None = None,
    should_cancel: Callable[[], bool] | None = None,
    started: Callable[[list[int]], None] | None = None,
    timeout_s: float = 600.0,
    cancel_grace_s: float = 10.0,
) -> dict[str, Any]:
    """Train like `sage.training.fit` on `world_size` ranks; returns rank 0's metrics.

    `started(pids)` is called with the ranks' process ids once they run. Raises `Cancelled` when
    `should_cancel()` turned True (every rank stopped), `RankFailed` when a rank died (the others
    are stopped within seconds), and leaves `out_dir/model.pt` unwritten in both cases."""
    if world_size < 2:
        raise ValueError("fit_distributed needs world_size >= 2; use sage.training.fit for one device")
    if config.batch_size < 2 * world_size:
        raise ValueError(
            f"batch_size {config.batch_size} is too small for {world_size} ranks: each needs at least 2 rows"
        )
    device = resolve_device(config.device)
    if device.type == "cuda" and torch.cuda.device_count() < world_size:
        raise ValueError(
            f"{world_size} ranks need {world_size} GPUs; this worker sees {torch.cuda.device_count()}"
        )
    out_dir = Path(out_dir)
    control = out_dir / ".ddp"
    control.mkdir(parents=True, exist_ok=True)
    (control / CANCEL_FILE).unlink(missing_ok=True)
    spec = {
        "config": config.to_dict(),
        "data_dir": str(Path(data_dir).resolve()),
        "out_dir": str(out_dir.resolve()),
        "control_dir": str(control.resolve()),
        "timeout_s": timeout_s,
    }
    spec_path = control / "spec.json"
    spec_path.write_text(json.dumps(spec))
    env = dict(os.environ)
    env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()), WORLD_SIZE=str(world_size))
    procs: list[subprocess.Popen] = []
    events: queue.Queue = queue.Queue()
    try:
        for rank in range(world_size):
            with open(control / f"rank-{rank}.log", "wb") as log:
                procs.append(
                    subprocess.Popen(
                        [sys.executable, "-m", "sage.distributed", str(spec_path)],
                        env={**env, "RANK": str(rank), "LOCAL_RANK": str(rank)},
                        stdout=subprocess.PIPE if rank == 0 else subprocess.DEVNULL,
                        stderr=log,
                        preexec_fn=_die_with_parent,  # noqa: PLW1509 - only a prctl call runs in the child
                    )
                )
        reader = threading.Thread(target=_read_events, args=(procs[0].stdout, events), daemon=True)
        reader.start()
        if started is not None:
            started([p.pid for p in procs])
        cancel_at: float | None = None
        while True:
            _relay(events, progress)
            codes = [p.poll() for p in procs]
            failed = [(r, c) for r, c in enumerate(codes) if c not in (None, 0, EXIT_CANCELLED)]
            if failed:
                rank, code = failed[0]
                _stop(procs, grace_s=3.0)
                how = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with {code}"
                detail = _tail(control / f"rank-{rank}.log")
                raise RankFailed(f"rank {rank} of {world_size} {how}" + (f": {detail}" if detail else ""))
            if all(c is not None for c in codes):
                if any(c == EXIT_CANCELLED for c in codes):
                    raise Cancelled("cancelled: every rank stopped")
                break
            if cancel_at is None and should_cancel is not None and should_cancel():
                (control / CANCEL_FILE).touch()
                cancel_at = time.monotonic()
            if cancel_at is not None and time.monotonic() - cancel_at > cancel_grace_s:
                _stop(procs, grace_s=3.0)
                raise Cancelled(
                    f"cancelled: ranks did not stop within {cancel_grace_s:.0f} s and were killed"
                )
            time.sleep(0.05)
        reader.join(timeout=5)
        _relay(events, progress)
        if should_cancel is not None and should_cancel():
            raise Cancelled("cancelled after the last epoch")
        return torch.load(out_dir / METRICS_FILE, weights_only=False)
    except BaseException:
        (out_dir / "model.pt").unlink(missing_ok=True)
        raise
    finally:
        _stop(procs, grace_s=3.0)
        for proc in procs:
            if proc.stdout is not None:
                proc.stdout.close()
        (out_dir / METRICS_FILE).unlink(missing_ok=True)
        shutil.rmtree(control, ignore_errors=True)


def _read_events(stream, events: queue.Queue) -> None:
    for raw in iter(stream.readline, b""):
        line = raw.decode(errors="replace").strip()
        if line.startswith(EVENT_PREFIX):
            with contextlib.suppress(ValueError):
                events.put(json.loads(line[len(EVENT_PREFIX) :]))


def _relay(events: queue.Queue, progress: ProgressFn | None) -> None:
    while True:
        try:
            event = events.get_nowait()
        except queue.Empty:
            return
        if progress is not None:
            progress(event)


# --- a rank ---------------------------------------------------------------------------------------


def _emit(event: dict[str, Any]) -> None:
    sys.stdout.write(EVENT_PREFIX + json.dumps(event, default=float) + "\n")
    sys.stdout.flush()


def fit_rank(
    config: TrainConfig, data_dir: Path, out_dir: Path, control_dir: Path, rank: int, world: int
) -> dict[str, Any] | None:
    """The training loop of one rank (process group already initialised); rank 0 returns the
    metrics and writes model.pt, the others return None."""
    started = time.perf_counter()
    device = resolve_device(config.device)
    if device.type == "cuda":
        device = torch.device("cuda", rank)
    seed_everything(config.seed, config.deterministic)
    data = prepare_data(config, data_dir)
    model, task, plan, run_config = build_task(config, data, device)  # the same set-up as `fit`
    ddp = torch.nn.parallel.DistributedDataParallel(
        task,
        device_ids=[rank] if device.type == "cuda" else None,
        find_unused_parameters=True,  # methods skip their saliency branch on batches without maps
    )
    sampler = DistributedBatchSampler(data.train, run_config, rank, world)
    steps = len(sampler.global_batches(0))
    optimizer, scheduler = build_optimizer(run_config, model, steps, plan.backbone_lr_scale)
    cancel_file = control_dir / CANCEL_FILE
    flag = torch.zeros(1, device=device)
    state: dict[str, Any] = {"epoch": 0, "best_val_loss": math.inf, "best_epoch": 0, "bad_epochs": 0, "history": [],
             "train_seconds": 0.0}  # fmt: skip
    best_weights = None
    amp = run_config.amp and device.type == "cuda"
    train_clock = time.perf_counter()
    images_done = 0
    for epoch in range(1, config.epochs + 1):
        torch.manual_seed(_epoch_seed(config.seed, epoch))  # same augmentation draws as one process
        epoch_start = time.perf_counter()
        task.train()
        chunks = sampler.global_batches(epoch)
        sums: dict[str, float] = {}
        correct = seen = 0
        for step, rows in enumerate(chunks, start=1):
            flag.fill_(1.0 if cancel_file.exists() else 0.0)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            if flag.item() > 0:
                raise Cancelled(f"cancelled at epoch {epoch}, step {step}")
            full = to_batch(data.train, rows, device, run_config.augment)
            mine = sampler.shard(rows).to(device)
            batch = Batch(full.images[mine], full.saliency[mine], full.has_saliency[mine], full.labels[mine])
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp):
                result = ddp(batch)
            loss = result["loss"]
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"loss is {loss.item()} at epoch {epoch}, step {step} on rank {rank}; lower lr or enable grad_clip"
                )
            optimizer.zero_grad(set_to_none=True)
            (loss * (len(mine) * world / len(rows))).backward()  # DDP averages: the global mean
            if run_config.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(task.parameters(), run_config.grad_clip)
            optimizer.step()
            scheduler.step()
            for key, value in result.items():
                if key != "output":
                    sums[key] = sums.get(key, 0.0) + float(value.detach())
            correct += int((result["output"].argmax(1) == batch.labels).sum())
            seen += len(mine)
            images_done += len(rows)
            if rank == 0 and step % config.progress_every == 0 and step != len(chunks):
                elapsed = time.perf_counter() - train_clock
                done_steps = (epoch - 1) * steps + step
                remaining = config.epochs * steps - done_steps
                losses = {k: v / step for k, v in sums.items()}
                _emit(_event(epoch, config.epochs, step, len(chunks), losses, None,
                             elapsed / done_steps * remaining, images_done / max(elapsed, 1e-9)))  # fmt: skip
        # The epoch's loss terms and accuracy over every rank.
        keys = sorted(sums)
        totals = torch.tensor([sums[k] for k in keys] + [float(correct), float(seen)], device=device)
        dist.all_reduce(totals)
        losses = {k: float(totals[i]) / world / max(len(chunks), 1) for i, k in enumerate(keys)}
        losses["accuracy"] = float(totals[-2]) / max(float(totals[-1]), 1.0)
        epoch_seconds = time.perf_counter() - epoch_start
        state["train_seconds"] += epoch_seconds
        val_t = torch.zeros(2, device=device)
        if rank == 0:
            val = validation_loss(model, data.val, device)
            val_t[0], val_t[1] = val["loss"], val["accuracy"]
        dist.broadcast(val_t, src=0)  # every rank takes the same early-stopping decision
        val = {"loss": float(val_t[0]), "accuracy": float(val_t[1])}
        state["epoch"] = epoch
        state["history"].append({"epoch": epoch, "train": losses, "val": val, "seconds": epoch_seconds})
        if val["loss"] < state["best_val_loss"] - 1e-6:
            state.update(best_val_loss=val["loss"], best_epoch=epoch, bad_epochs=0)
            if config.early_stopping_patience and rank == 0:
                best_weights = copy.deepcopy(model.state_dict())
        else:
            state["bad_epochs"] += 1
        if rank == 0:
            elapsed = time.perf_counter() - train_clock
            eta = elapsed / epoch * (config.epochs - epoch)
            _emit(
                _event(epoch, config.epochs, steps, steps, losses, val, eta, images_done / max(elapsed, 1e-9))
            )
            if config.checkpoint:
                _atomic_save(
                    {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                     "lr_scheduler": scheduler.state_dict(), "state": state, "best_weights": best_weights,
                     "config": config.to_dict(), "world_size": world},
                    out_dir / "checkpoint.pt",
                )  # fmt: skip
        if config.early_stopping_patience and state["bad_epochs"] >= config.early_stopping_patience:
            break
    if rank != 0:
        dist.barrier()
        return None
    if config.early_stopping_patience and best_weights is not None:
        model.load_state_dict(best_weights)
    metrics = _final_metrics(model, data, device, state)
    metrics["recipe"] = dataclasses.asdict(plan)
    metrics["total_seconds"] = time.perf_counter() - started
    metrics["world_size"] = world
    save_model(out_dir / "model.pt", model, config, data.labels, metrics)
    _atomic_save(metrics, out_dir / METRICS_FILE)
    dist.barrier()
    return metrics


def _rank_main(spec_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    config = TrainConfig.from_dict(spec["config"])
    cuda = resolve_device(config.device).type == "cuda"
    if cuda:
        torch.cuda.set_device(rank)
    dist.init_process_group(
        "nccl" if cuda else "gloo", rank=rank, world_size=world, timeout=timedelta(seconds=spec["timeout_s"])
    )
    try:
        fit_rank(
            config, Path(spec["data_dir"]), Path(spec["out_dir"]), Path(spec["control_dir"]), rank, world
        )
    except Cancelled:
        return EXIT_CANCELLED
    finally:
        with contextlib.suppress(Exception):
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(_rank_main(sys.argv[1]))
