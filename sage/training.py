"""The training loop (torchvision-references style): `fit` reads a dataset folder, trains one task,
evaluates, and writes `model.pt` atomically.

Read top to bottom: `fit` -> `prepare_data` -> `train_one_epoch` (per step: cancel check, device-side
augmentation, task forward, backward, clip, step) -> `evaluate` -> `save_model`. Randomness is
re-seeded from (seed, epoch) at the start of every epoch, so a run resumed from its epoch checkpoint
continues bit-for-bit as the uninterrupted run would (on the same device and software).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import random
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from sage import __version__
from sage.backbones import Classifier, create_model
from sage.config import TrainConfig
from sage.data import Sample, SplitTensors, limit_saliency, load_split, read_dataset, stratified_holdout
from sage.evaluation import evaluate, predict_probabilities
from sage.methods import Batch, Task, create_task
from sage.metrics import fit_temperature
from sage.protocols import evaluation_protocols, leave_subtype_out
from sage.recipes import TrainingPlan, plan_training
from sage.transforms import IMAGENET_MEAN, IMAGENET_STD, augment_batch, normalize

MODEL_FORMAT = "sage-model/1"
ProgressFn = Callable[[dict[str, Any]], None]


class Cancelled(Exception):  # the name the worker catches
    """`should_cancel()` returned True; nothing was written."""


@dataclass
class TrainingData:
    labels: list[str]
    train: SplitTensors
    val: SplitTensors
    test: SplitTensors | None
    unseen: SplitTensors | None = None  # test images of the left-out subtype (open-set)


def resolve_device(name: str) -> torch.device:
    """auto -> cuda when available, else cpu; cuda without a GPU is an error, not a silent CPU run."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' requested but no CUDA GPU is available; use --device cpu or auto")
    return torch.device(name)


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """The one place seeds and determinism switches are set."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = not deterministic
    torch.backends.cudnn.deterministic = deterministic


def prepare_data(config: TrainConfig, data_dir: str | Path) -> TrainingData:
    """Read and decode the dataset; hold out a stratified val split when labels.csv has none."""
    assert config.image_size is not None  # TrainConfig.__post_init__ sets it by backbone
    index = read_dataset(data_dir, config.labels or None)
    if config.positive_label is not None and config.positive_label not in index.labels:
        raise ValueError(f"positive_label {config.positive_label!r} is not one of the labels {index.labels}")
    unseen_samples: list[Sample] = []
    if config.leave_out_subtype:  # removed from train and val before any split is drawn
        index, unseen_samples = leave_subtype_out(index, config.leave_out_subtype)
    train_samples, val_samples, test_samples = (index.split(s) for s in ("train", "val", "test"))
    if not train_samples:
        raise ValueError(f"{data_dir}: no training images (rows with split train or no split)")
    train = load_split(index, train_samples, config.image_size, window=config.window)
    if val_samples:
        val = load_split(index, val_samples, config.image_size, window=config.window)
    else:
        groups = [s.group for s in train_samples]  # rows of `train` are in this order
        keep, held = stratified_holdout(train.labels.numpy(), config.val_fraction, config.seed, groups)
        if len(held) == 0 or len(keep) == 0:
            raise ValueError(
                f"{data_dir}: too few training images to hold out a validation split; add a val split"
            )
        train, val = train.subset(keep), train.subset(held)
    train = limit_saliency(train, config.saliency_fraction, config.seed)
    test = load_split(index, test_samples, config.image_size, window=config.window) if test_samples else None
    unseen = (
        load_split(index, unseen_samples, config.image_size, window=config.window) if unseen_samples else None
    )
    return TrainingData(index.labels, train, val, test, unseen)


def build_task(
    config: TrainConfig, data: TrainingData, device: torch.device
) -> tuple[Classifier, Task, TrainingPlan, TrainConfig]:
    """The model (pretrained weights loaded) on `device`, its method's task with the recipe's batch
    norm and class weights, the recipe, and the config with the recipe's optimisation values; the
    set-up `fit` and every rank of `sage.distributed.fit_rank` share."""
    pretrained = pretrained_file(config)
    assert config.image_size is not None  # TrainConfig.__post_init__ sets it by backbone
    model = create_model(config.backbone, len(data.labels), pretrained, config.image_size).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    counts = np.bincount(data.train.labels.numpy(), minlength=len(data.labels))
    plan = plan_training(config, pretrained is not None, counts)
    task = create_task(model, config)
    task.freeze_batchnorm = plan.freeze_batchnorm
    if plan.class_weights is not None:
        task.class_weights = torch.tensor(plan.class_weights, dtype=torch.float32)
    return model, task, plan, plan.config_for_training(config)


def pretrained_file(config: TrainConfig) -> Path | str | None:
    """The verified local file of `config.weights` (by registered name), else `pretrained_path`."""
    if config.weights:
        from sage.weights import weights_path

        return weights_path(config.weights, config.backbone, download=hub_download)
    return config.pretrained_path


def hub_download(url: str, folder: Path, file_name: str) -> None:
    """Fetch a torchvision weights file into `folder` with torch.hub, which checks the SHA-256
    prefix in its name."""
    torch.hub.load_state_dict_from_url(
        url, model_dir=str(folder), check_hash=True, file_name=file_name, progress=False
    )


def build_optimizer(
    config: TrainConfig, model: torch.nn.Module, steps_per_epoch: int, backbone_lr_scale: float = 1.0
):
    """The optimizer and per-step schedule; the classifier head trains at `config.lr`, the rest of
    the model (the backbone) at `config.lr * backbone_lr_scale`; no weight decay on biases/norms."""
    head = getattr(model, "head", None)
    head_ids = {id(p) for p in head.parameters()} if isinstance(head, torch.nn.Module) else set()
    buckets: dict[tuple[bool, bool], list] = {}
    for p in model.parameters():
        if p.requires_grad:
            buckets.setdefault((id(p) in head_ids, p.ndim > 1), []).append(p)
    groups: list[dict[str, Any]] = [
        {
            "params": params,
            "weight_decay": config.weight_decay if decays else 0.0,
            "lr": config.lr if is_head else config.lr * backbone_lr_scale,
        }
        for (is_head, decays), params in sorted(buckets.items(), key=lambda kv: kv[0])
    ]
    if config.optimizer == "sgd":
        optimizer: torch.optim.Optimizer = torch.optim.SGD(
            groups, lr=config.lr, momentum=config.momentum, nesterov=True
        )
    else:
        optimizer = torch.optim.AdamW(groups, lr=config.lr)
    total = config.epochs * steps_per_epoch
    warmup = config.warmup_epochs * steps_per_epoch
    if config.schedule == "onecycle":
        scheduler: torch.optim.lr_scheduler.LRScheduler = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=[g["lr"] for g in groups], total_steps=max(total, 1)
        )
    else:
        cosine = config.schedule == "cosine"

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            if not cosine:
                return 1.0
            t = (step - warmup) / max(1, total - warmup)
            return 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    return optimizer, scheduler


def batches(n: int, batch_size: int, generator: torch.Generator, annotated: torch.Tensor | None = None,
            share: float = 0.0) -> list[torch.Tensor]:  # fmt: skip
    """Shuffled index batches; a last batch of one row is dropped (batch norm needs two).

    With `annotated` (a (n,) bool mask) and `share` > 0, when the annotated images are too few for
    plain shuffling to give each batch round(share * batch_size) of them on average, every batch
    holds exactly that many: the annotated images are cycled through (reshuffled on each pass) as
    often as that takes and the others fill the rest of each batch in shuffled order (those that do
    not fit are skipped this epoch). With enough annotated images plain shuffling is kept. The
    number of batches per epoch stays ceil(n / batch_size), so the step budget is unchanged.
    """
    order = torch.randperm(n, generator=generator)
    chunks = list(order.split(batch_size))
    if annotated is not None and share > 0 and len(chunks) > 1:
        per_batch = min(batch_size, max(1, round(share * batch_size)))
        if 0 < int(annotated.sum()) < per_batch * len(chunks):  # plain shuffling would not reach the share
            chunks = _annotated_share_batches(order, annotated, per_batch, batch_size, len(chunks), generator)
    if len(chunks) > 1 and len(chunks[-1]) == 1:
        chunks.pop()
    return chunks


def _annotated_share_batches(
    order, annotated, per_batch, batch_size, n_batches, generator
) -> list[torch.Tensor]:
    marked = order[annotated[order]]
    rest = order[~annotated[order]]
    need = per_batch * n_batches
    cycles = [marked] + [
        marked[torch.randperm(len(marked), generator=generator)] for _ in range(need // len(marked))
    ]
    stream = torch.cat(cycles)[:need].view(n_batches, per_batch)
    fill = list(rest.tensor_split(n_batches)) if len(rest) else [rest] * n_batches
    out = []
    for i in range(n_batches):
        rows = torch.cat([stream[i], fill[i][: batch_size - per_batch]])
        out.append(rows[torch.randperm(len(rows), generator=generator)])
    return out


def epoch_batches(data: SplitTensors, config: TrainConfig, seed: int) -> list[torch.Tensor]:
    """The index batches of one epoch of `data` (see `batches`)."""
    return batches(
        len(data),
        config.batch_size,
        torch.Generator().manual_seed(seed),
        data.has_saliency,
        config.annotated_share,
    )


def to_batch(split: SplitTensors, rows: torch.Tensor, device: torch.device, augment: str) -> Batch:
    images = split.images[rows].to(device, non_blocking=True).float().div_(255)
    saliency = split.saliency[rows].to(device, non_blocking=True).float().div_(255)
    images, saliency = augment_batch(images, saliency, "crop" if augment == "auto" else augment)
    has = split.has_saliency[rows].to(device)
    if device.type == "cuda":
        images = images.contiguous(memory_format=torch.channels_last)
    return Batch(normalize(images), saliency, has, split.labels[rows].to(device))


def train_one_epoch(
    task: Task, optimizer, scheduler, data: SplitTensors, config: TrainConfig, device: torch.device,
    epoch: int, report: Callable[[int, int, dict[str, float], int], None], should_cancel: Callable[[], bool] | None,
) -> dict[str, float]:  # fmt: skip
    """One pass over the training split; returns the mean of each loss term and the accuracy."""
    task.train()
    chunks = epoch_batches(data, config, _epoch_seed(config.seed, epoch))
    amp = config.amp and device.type == "cuda"
    sums: dict[str, float] = {}
    correct = seen = 0
    for step, rows in enumerate(chunks, start=1):
        if should_cancel is not None and should_cancel():
            raise Cancelled(f"cancelled at epoch {epoch}, step {step}")
        batch = to_batch(data, rows, device, config.augment)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp):
            result = task(batch)
        loss = result["loss"]
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"loss is {loss.item()} at epoch {epoch}, step {step}; lower lr or enable grad_clip"
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(task.parameters(), config.grad_clip)
        optimizer.step()
        scheduler.step()
        for key, value in result.items():
            if key != "output":
                sums[key] = sums.get(key, 0.0) + float(value.detach())
        correct += int((result["output"].argmax(1) == batch.labels).sum())
        seen += len(rows)
        report(step, len(chunks), {k: v / step for k, v in sums.items()}, len(rows))
    means = {k: v / max(len(chunks), 1) for k, v in sums.items()}
    means["accuracy"] = correct / max(seen, 1)
    return means


def validation_loss(
    model: Classifier, data: SplitTensors, device: torch.device, batch_size: int = 256
) -> dict[str, float]:
    """Cross-entropy and accuracy on a split (the per-epoch check; the full report is `evaluate`)."""
    model.eval()
    total = correct = 0.0
    with torch.inference_mode():
        for start in range(0, len(data), batch_size):
            x = normalize(data.images[start : start + batch_size].to(device))
            y = data.labels[start : start + batch_size].to(device)
            logits = model(x).float()
            total += float(F.cross_entropy(logits, y, reduction="sum"))
            correct += float((logits.argmax(1) == y).sum())
    n = max(len(data), 1)
    return {"loss": total / n, "accuracy": correct / n}


def fit(
    config: TrainConfig,
    data_dir: str | Path,
    out_dir: str | Path,
    *,
    progress: ProgressFn | None = None,
    should_cancel: Callable[[], bool] | None = None,
    resume: bool = False,
) -> dict[str, Any]:
    """Train `config.method` on the dataset folder `data_dir` and write `out_dir/model.pt`.

    progress(event) is called every `config.progress_every` steps and at the end of every epoch
    with {"epoch", "epochs", "step", "steps", "losses": {term: running mean}, "val": {"loss",
    "accuracy"} at epoch ends else None, "eta_s", "images_per_s"}. should_cancel() is checked before
    every step; when it returns True, `Cancelled` is raised and model.pt is not written (an opt-in
    per-epoch checkpoint.pt from earlier epochs is left for resuming). resume=True continues from
    out_dir/checkpoint.pt (written when config.checkpoint is set) when it exists.

    model.pt is written to a temporary file and renamed into place. Returns the metrics: val_accuracy,
    val_loss, epochs_run, best_epoch, train_seconds, seconds_per_epoch, images_per_s, num_train,
    num_val, num_test, num_train_with_saliency, val (full report), and test_accuracy + test when the
    dataset has a test split.
    """
    started = time.perf_counter()
    out_dir = Path(out_dir)
    device = resolve_device(config.device)
    seed_everything(config.seed, config.deterministic)
    data = prepare_data(config, data_dir)
    model, task, plan, run_config = build_task(config, data, device)
    steps = len(epoch_batches(data.train, run_config, 0))
    optimizer, scheduler = build_optimizer(run_config, model, steps, plan.backbone_lr_scale)

    state: dict[str, Any] = {
        "epoch": 0,
        "best_val_loss": math.inf,
        "best_epoch": 0,
        "bad_epochs": 0,
        "history": [],
        "train_seconds": 0.0,
    }
    best_weights = None
    checkpoint_path = out_dir / "checkpoint.pt"
    if resume and checkpoint_path.is_file():
        ckpt = torch.load(checkpoint_path, map_location=device, weights_only=False)
        if ckpt["config"] != config.to_dict():
            raise ValueError(
                f"{checkpoint_path} was written with another configuration; resume with the same one"
            )
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["lr_scheduler"])
        state = ckpt["state"]
        best_weights = ckpt["best_weights"]

    images_done = 0
    train_clock = time.perf_counter()
    total_steps = config.epochs * steps

    start_epoch = state["epoch"] + 1
    for epoch in range(start_epoch, config.epochs + 1):
        torch.manual_seed(_epoch_seed(config.seed, epoch))  # views, augmentation, dropout
        epoch_start = time.perf_counter()

        def report(step: int, n_steps: int, losses: dict[str, float], batch_images: int, epoch=epoch) -> None:
            nonlocal images_done
            images_done += batch_images
            if progress is None or (step % config.progress_every and step != n_steps):
                return
            elapsed = time.perf_counter() - train_clock
            done_steps = (epoch - start_epoch) * steps + step
            remaining = total_steps - ((epoch - 1) * steps + step)
            progress(
                _event(
                    epoch,
                    config.epochs,
                    step,
                    n_steps,
                    losses,
                    None,
                    elapsed / max(done_steps, 1) * remaining,
                    images_done / max(elapsed, 1e-9),
                )
            )

        losses = train_one_epoch(
            task, optimizer, scheduler, data.train, run_config, device, epoch, report, should_cancel
        )
        epoch_seconds = time.perf_counter() - epoch_start
        state["train_seconds"] += epoch_seconds
        val = validation_loss(model, data.val, device)
        state["epoch"] = epoch
        state["history"].append({"epoch": epoch, "train": losses, "val": val, "seconds": epoch_seconds})
        if val["loss"] < state["best_val_loss"] - 1e-6:
            state.update(best_val_loss=val["loss"], best_epoch=epoch, bad_epochs=0)
            if config.early_stopping_patience:
                best_weights = copy.deepcopy(model.state_dict())
        else:
            state["bad_epochs"] += 1
        if progress is not None:
            elapsed = time.perf_counter() - train_clock
            eta = elapsed / (epoch - start_epoch + 1) * (config.epochs - epoch)
            progress(
                _event(epoch, config.epochs, steps, steps, losses, val, eta, images_done / max(elapsed, 1e-9))
            )
        if config.checkpoint:
            _atomic_save(
                {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "lr_scheduler": scheduler.state_dict(),
                 "state": state, "best_weights": best_weights, "config": config.to_dict()},
                checkpoint_path,
            )  # fmt: skip
        if config.early_stopping_patience and state["bad_epochs"] >= config.early_stopping_patience:
            break

    if should_cancel is not None and should_cancel():
        raise Cancelled("cancelled after the last epoch")
    if config.early_stopping_patience and best_weights is not None:
        model.load_state_dict(best_weights)

    metrics = _final_metrics(model, data, device, state)
    metrics.update(protocol_metrics(model, data, config, device, metrics.get("temperature") or 1.0))
    metrics["recipe"] = dataclasses.asdict(plan)
    metrics["total_seconds"] = time.perf_counter() - started
    save_model(out_dir / "model.pt", model, config, data.labels, metrics)
    return metrics


def _event(epoch, epochs, step, steps, losses, val, eta, ips) -> dict[str, Any]:
    return {
        "epoch": epoch, "epochs": epochs, "step": step, "steps": steps,
        "losses": {k: float(v) for k, v in losses.items()}, "val": val,
        "eta_s": float(max(eta, 0.0)), "images_per_s": float(ips),
    }  # fmt: skip


def _final_metrics(model, data: TrainingData, device, state) -> dict[str, Any]:
    """Validation (and test) reports, the temperature fitted on validation, and the headline numbers
    at the top level: {val,test}_{accuracy, auroc, balanced_accuracy, sens_at_95_spec,
    ece_calibrated}."""
    temperature = fit_temperature(predict_probabilities(model, data.val, device), data.val.labels.numpy())
    val = evaluate(model, data.val, data.labels, device, temperature=temperature)
    epochs_run = len(state["history"]) and state["history"][-1]["epoch"]
    metrics: dict[str, Any] = {
        "val_accuracy": val["accuracy"],
        "val_loss": val["loss"],
        "epochs_run": epochs_run,
        "best_epoch": state["best_epoch"],
        "train_seconds": state["train_seconds"],
        "seconds_per_epoch": state["train_seconds"] / max(epochs_run, 1),
        "images_per_s": len(data.train) * epochs_run / max(state["train_seconds"], 1e-9),
        "num_train": len(data.train),
        "num_val": len(data.val),
        "num_test": len(data.test) if data.test is not None else 0,
        "num_train_with_saliency": int(data.train.has_saliency.sum()),
        "labels": data.labels,
        "val": val,
        "history": state["history"],
        "temperature": temperature,
        **_headline("val", val),
    }
    if data.test is not None:
        test = evaluate(model, data.test, data.labels, device, temperature=temperature)
        metrics["test_accuracy"] = test["accuracy"]
        metrics["test"] = test
        metrics.update(_headline("test", test))
    return metrics


def protocol_metrics(
    model, data: TrainingData, config: TrainConfig, device, temperature: float = 1.0
) -> dict[str, Any]:
    """ROC/AUROC, PAD error rates and open-set numbers (`sage.protocols`) for the run's metrics, on
    the probabilities served (calibrated with `temperature`), so the thresholds apply as they are."""

    def scored(split: SplitTensors | None):
        if split is None:
            return None
        probs = predict_probabilities(model, split, device) ** (1.0 / temperature)  # softmax(z / T)
        return split.labels.numpy(), probs / probs.sum(axis=1, keepdims=True)

    return evaluation_protocols(
        data.labels,
        scored(data.val),
        scored(data.test),
        positive_label=config.positive_label,
        unseen=scored(data.unseen),
        unseen_subtype=config.leave_out_subtype,
        seed=config.seed,
    )


def _headline(prefix: str, report: dict[str, Any]) -> dict[str, Any]:
    keys = {"auroc": "roc_auc", "balanced_accuracy": "balanced_accuracy", "sens_at_95_spec": "sens_at_95_spec",
            "ece_calibrated": "ece_calibrated"}  # fmt: skip
    return {f"{prefix}_{name}": report.get(key) for name, key in keys.items()}


def save_model(path: Path, model: Classifier, config: TrainConfig, labels: list[str], metrics: dict) -> None:
    """Write the model artifact: everything `Predictor.load` needs to rebuild and run the model."""
    _atomic_save(
        {
            "format": MODEL_FORMAT,
            "sage_version": __version__,
            "model_state": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "backbone": config.backbone,
            "num_classes": len(labels),
            "image_size": config.image_size,
            "labels": list(labels),
            "normalization": {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)},
            "config": config.to_dict(),
            "metrics": metrics,
        },
        path,
    )


def _atomic_save(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch * 7919) % (2**63 - 1)
