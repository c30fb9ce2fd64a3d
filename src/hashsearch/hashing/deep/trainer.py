"""The one training loop every deep hasher uses: mini-batch Adam over cached features or pixels.

Optionally it scores the model on held-out data after each epoch (`validate`), keeps the weights
of the best epoch and stops when `patience` epochs bring no gain, and writes a checkpoint after
each epoch, or at most every `checkpoint_seconds` (`checkpoint`), from which a killed run resumes
where it stopped. Progress shows as a tqdm bar on a terminal, else as a logged line every
`log_seconds` (`log`).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from hashsearch.validation import check_int, check_real

logger = logging.getLogger(__name__)


#: Version of the checkpoint file `train` writes; another version is not resumed from.
CHECKPOINT_VERSION = 1


@dataclass
class TrainHistory:
    """What a training run did.

    Attributes
    ----------
    epoch_loss : list of float
        Mean training loss of each epoch run (weighted by batch size).
    seconds : float
        Wall time of training, summed over the runs of a resumed training.
    val_score : list of float
        The `validate` score after each epoch (empty without `validate`).
    best_epoch : int or None
        The epoch (1-based) whose weights the model holds at the end (None without `validate`:
        the last one).
    stopped_early : bool
        Training stopped before `epochs` because `patience` epochs brought no gain.
    resumed_at : int
        Epochs read back from a checkpoint when the run started (0: a fresh start).
    """

    epoch_loss: list[float] = field(default_factory=list)
    seconds: float = 0.0
    val_score: list[float] = field(default_factory=list)
    best_epoch: int | None = None
    stopped_early: bool = False
    resumed_at: int = 0


def resolve_device(device: str | torch.device) -> torch.device:
    """`device` as a torch.device, or a ValueError saying why it cannot be used here."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"device={device!r} is not a torch device name; use 'cpu' or 'cuda' ('cuda:0', ...)") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} but this torch has no usable CUDA device; use device='cpu'")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device={device!r} but MPS is not available here; use device='cpu'")
    return dev


@contextlib.contextmanager
def seeded(seed: int, device: str | torch.device = "cpu") -> Iterator[None]:
    """Seed torch's global RNG (init, dropout) for the block, restoring the caller's RNG state after."""
    dev = torch.device(device)
    fork_devices = [dev.index or 0] if dev.type == "cuda" else []
    with torch.random.fork_rng(devices=fork_devices):
        torch.manual_seed(seed)
        yield


def train(
    model: nn.Module,
    loss_fn: nn.Module,
    X,
    y,
    epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    seed: int,
    device: str | torch.device,
    log_every: int | None = None,
    progress: bool = True,
    cosine: bool = False,
    validate: Callable[[nn.Module], float] | None = None,
    patience: int | None = None,
    checkpoint: str | os.PathLike | None = None,
    desc: str | None = None,
    ema: float = 0.0,
    checkpoint_seconds: float = 0.0,
    log: logging.Logger | None = None,
    log_seconds: float = 10.0,
) -> TrainHistory:
    """Train `model` in place to minimise ``loss_fn(model(X_batch), y_batch)``; return the history.

    Mini-batches are a fresh seeded shuffle of all rows each epoch (the last batch may be
    smaller); the optimiser is Adam with L2 `weight_decay`. Shuffling uses its own
    `torch.Generator`, and dropout draws from torch's global RNG seeded with `seed` inside a
    forked RNG state, so a run is reproducible and leaves the caller's RNG untouched. The model
    is left on `device` in eval mode. Weights are initialised by the caller (build the model
    inside `seeded(seed)` for reproducible init).

    Parameters
    ----------
    model : nn.Module
        A head: ``model(x)`` returns what `loss_fn` expects (a `HeadOutput`).
    loss_fn : nn.Module
        Called as ``loss_fn(model(xb), yb)``; returns a scalar tensor.
    X : (n, d) array or tensor
        Input features (float; standardise them first), or (n, s, s, 3) uint8 images for a
        model that takes pixels (`endtoend.ImageModel`).
    y : (n,) or (n, c) array or tensor
        Targets; integer arrays become int64, others float32.
    epochs, batch_size : int
        Passes over the data and rows per step.
    lr, weight_decay : float
        Adam's learning rate and L2 penalty.
    seed : int
        Seed of the shuffling and of dropout.
    device : str or torch.device
        Where to train ('cpu', 'cuda', ...).
    log_every : int, optional
        Log (``logging`` INFO, logger ``hashsearch.hashing.deep.trainer``) every that many epochs.
    progress : bool
        Show a tqdm bar of the images trained on (images/s, time left for all `epochs`) with
        the epoch, its loss and validation score (hidden anyway when stderr is not a TTY).
    cosine : bool
        Anneal the learning rate to 0 over the epochs (cosine), as for training a network from scratch.
    validate : callable, optional
        ``validate(model) -> float``, higher is better (e.g. the mAP of held-out images), called
        after each epoch with the model in eval mode under ``torch.no_grad``. The model ends
        with the weights of the best-scoring epoch (the first of equal ones).
    patience : int, optional
        With `validate`: stop after this many epochs without a better score (None: run all `epochs`).
    checkpoint : path, optional
        A file written (atomically) after each epoch with the model's, the optimiser's, the
        schedule's and the loss's state, both RNGs and the history. If it exists when training
        starts, training resumes from it, so a killed run ends as an uninterrupted one would,
        with the same number of epochs. A checkpoint of other settings (epochs, rows, batch
        size, lr, seed) raises ValueError. The caller removes it once the result is saved.
    checkpoint_seconds : float
        Write the checkpoint after an epoch only once this many seconds have passed since it was
        last written (or training began), and always after the last epoch (also one that stops
        early); 0: after every epoch. A killed run then loses at most this many seconds of
        training. For epochs of milliseconds (a head on cached features: 2,000 one-step epochs
        on 96 images spent 4.3 s of 10.7 s writing checkpoints), not for epochs of seconds.
    desc : str, optional
        The progress bar's label (default "training <model class>").
    log : logging.Logger, optional
        Where a progress line (epoch, loss, validation score, time so far and left) goes at
        most every `log_seconds` while the bar is hidden (stderr not a terminal, or `progress`
        False): a long fit logged to a file or a pipe still shows it is moving.
    log_seconds : float
        The least time between two such lines.
    ema : float
        Decay of an exponential moving average of the weights and buffers, updated after every
        step (`torch.optim.swa_utils.AveragedModel`; 0: none), warming up as
        min(ema, (1 + t) / (10 + t)) after t steps. The average is what `validate` scores and
        what the model holds at the end.

    A model with a ``set_epoch(epoch, epochs)`` method (`endtoend.ImageModel`: progressive
    resizing) is told each epoch (0-based) before it starts.

    Raises
    ------
    ValueError
        Bad settings, X and y of different lengths, a checkpoint of other settings or damaged.
    FloatingPointError
        The loss became NaN or infinite.
    """
    from tqdm.auto import tqdm

    check_int("epochs", epochs, low=1)
    check_int("batch_size", batch_size, low=1)
    check_real("lr", lr, low=0, low_open=True, finite=True)
    check_real("weight_decay", weight_decay, low=0, finite=True)
    check_int("log_every", log_every, low=1, allow_none=True)
    check_int("patience", patience, low=1, allow_none=True, none_means="run all epochs")
    check_real("ema", ema, low=0, high=1, high_open=True)
    check_real("checkpoint_seconds", checkpoint_seconds, low=0, finite=True)
    check_real("log_seconds", log_seconds, low=0, finite=True)
    if patience is not None and validate is None:
        raise ValueError(f"patience={patience} needs validate (a score to wait for); pass validate= or patience=None")
    dev = resolve_device(device)

    X = torch.as_tensor(np.asarray(X) if not torch.is_tensor(X) else X)
    # uint8 images stay uint8 (a quarter of the memory); the model converts each batch.
    X = X.to(dev, torch.uint8 if X.dtype == torch.uint8 else torch.float32)
    y = torch.as_tensor(np.asarray(y) if not torch.is_tensor(y) else y)
    y = y.to(dev, torch.int64 if not (y.is_floating_point() or y.is_complex()) else torch.float32)
    n = X.shape[0]
    if y.shape[0] != n:
        raise ValueError(f"X has {n} rows but y has {y.shape[0]}; pass one target per row")

    model.to(dev)
    # A model may train its parts at different rates (a pretrained backbone slower than a new head).
    groups = model.param_groups(lr) if hasattr(model, "param_groups") else model.parameters()
    optimiser = torch.optim.Adam(groups, lr=lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, int(epochs)) if cosine else None
    shuffle = torch.Generator().manual_seed(int(seed))
    history = TrainHistory()
    settings = {
        "epochs": int(epochs),
        "rows": int(n),
        "batch_size": int(batch_size),
        "lr": float(lr),
        "seed": int(seed),
    }
    if ema:
        settings["ema"] = float(ema)  # absent when off, so that older checkpoints still resume
    averaged = None
    if ema:
        from torch.optim.swa_utils import AveragedModel

        averaged = AveragedModel(model, avg_fn=_ema_step(float(ema)), use_buffers=True)
    best_state: dict | None = None
    best_score = -math.inf
    since_best = 0
    done = 0
    before = 0.0
    t0 = time.perf_counter()
    with seeded(int(seed), dev):
        if checkpoint is not None and Path(checkpoint).is_file():
            state = _read_checkpoint(Path(checkpoint), settings)
            model.load_state_dict(state["model"])
            if averaged is not None:
                averaged.load_state_dict(state["ema"])
            optimiser.load_state_dict(state["optimiser"])
            if schedule is not None and state["schedule"] is not None:
                schedule.load_state_dict(state["schedule"])
            if isinstance(loss_fn, nn.Module):
                loss_fn.load_state_dict(state["loss"])
            shuffle.set_state(state["shuffle_rng"])
            torch.set_rng_state(state["torch_rng"])
            if dev.type == "cuda" and state.get("cuda_rng") is not None:
                torch.cuda.set_rng_state(state["cuda_rng"], dev)
            h = state["history"]
            history = TrainHistory(
                epoch_loss=list(h["epoch_loss"]),
                seconds=float(h["seconds"]),
                val_score=list(h["val_score"]),
                best_epoch=h["best_epoch"],
                stopped_early=bool(h["stopped_early"]),
            )
            done = history.resumed_at = len(history.epoch_loss)
            before = history.seconds  # the killed runs' time, to which this run's adds
            best_state, best_score, since_best = (
                state["best_model"],
                float(state["best_score"]),
                int(state["since_best"]),
            )
            logger.info("resumed from %s after epoch %d of %d", checkpoint, done, epochs)
        model.train()
        label = desc or f"training {type(model).__name__}"
        bar = tqdm(
            total=int(epochs) * n,
            initial=done * n,
            desc=label,
            unit="img",
            unit_scale=True,
            disable=None if progress else True,
            leave=False,
        )
        written = logged = time.perf_counter()  # the last checkpoint written, and the last progress line
        for epoch in range(done, int(epochs)):
            if history.stopped_early:
                break
            if hasattr(model, "set_epoch"):
                model.set_epoch(epoch, int(epochs))
            order = torch.randperm(n, generator=shuffle).to(dev)
            total = torch.zeros((), dtype=torch.float64, device=dev)
            for start in range(0, n, int(batch_size)):
                idx = order[start : start + int(batch_size)]
                loss = loss_fn(model(X[idx]), y[idx])
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
                if averaged is not None:
                    averaged.update_parameters(model)
                total += loss.detach().double() * idx.numel()
                bar.update(int(idx.numel()))
            mean = float(total) / n
            if not math.isfinite(mean):
                raise FloatingPointError(
                    f"training loss became {mean} in epoch {epoch + 1}; lower lr (got {lr}) "
                    f"or check the features for extreme values"
                )
            history.epoch_loss.append(mean)
            if schedule is not None:
                schedule.step()
            postfix = {"epoch": f"{epoch + 1}/{epochs}", "loss": f"{mean:.4f}"}
            if validate is not None:
                scored = model if averaged is None else averaged.module
                scored.eval()
                # Scoring must not move the RNG dropout and augmentation draw from (a validate that
                # builds a network would, and a resumed run, which does not rebuild it, would differ).
                with torch.no_grad(), torch.random.fork_rng(devices=[dev.index or 0] if dev.type == "cuda" else []):
                    score = float(validate(scored))
                model.train()
                history.val_score.append(score)
                postfix["val"] = f"{score:.4f}"
                if score > best_score:
                    best_score, since_best, history.best_epoch = score, 0, epoch + 1
                    best_state = {k: v.detach().to("cpu", copy=True) for k, v in scored.state_dict().items()}
                else:
                    since_best += 1
                    if patience is not None and since_best >= patience and epoch + 1 < epochs:
                        history.stopped_early = True
            bar.set_postfix(postfix)
            if log_every is not None and ((epoch + 1) % log_every == 0 or epoch + 1 == epochs):
                logger.info("epoch %d/%d  loss %.5f", epoch + 1, epochs, mean)
            now = time.perf_counter()
            last = epoch + 1 == epochs or history.stopped_early
            if log is not None and bar.disable and not last and now - logged >= log_seconds:
                logged = now
                ran = now - t0
                left = ran / (epoch + 1 - done) * (int(epochs) - epoch - 1)
                val = f", validation {history.val_score[-1]:.4f}" if history.val_score else ""
                log.info(
                    "%s: epoch %s/%s, loss %.4f%s; %.0fs so far, about %.0fs left",
                    label,
                    f"{epoch + 1:,}",
                    f"{int(epochs):,}",
                    mean,
                    val,
                    before + ran,
                    left,
                )
            if checkpoint is not None and (last or now - written >= checkpoint_seconds):
                history.seconds = before + time.perf_counter() - t0
                _write_checkpoint(
                    Path(checkpoint),
                    {
                        "version": CHECKPOINT_VERSION,
                        "settings": settings,
                        "model": model.state_dict(),
                        "ema": None if averaged is None else averaged.state_dict(),
                        "optimiser": optimiser.state_dict(),
                        "schedule": None if schedule is None else schedule.state_dict(),
                        "loss": loss_fn.state_dict() if isinstance(loss_fn, nn.Module) else {},
                        "shuffle_rng": shuffle.get_state(),
                        "torch_rng": torch.get_rng_state(),
                        "cuda_rng": torch.cuda.get_rng_state(dev) if dev.type == "cuda" else None,
                        "history": {
                            "epoch_loss": history.epoch_loss,
                            "seconds": history.seconds,
                            "val_score": history.val_score,
                            "best_epoch": history.best_epoch,
                            "stopped_early": history.stopped_early,
                        },
                        "best_model": best_state,
                        "best_score": best_score,
                        "since_best": since_best,
                    },
                )
                written = time.perf_counter()
        bar.close()
    if best_state is not None:
        model.load_state_dict(best_state)
    elif averaged is not None:
        model.load_state_dict(averaged.module.state_dict())
    model.eval()
    history.seconds = before + time.perf_counter() - t0
    return history


def _ema_step(decay: float):
    """`AveragedModel`'s avg_fn for an EMA whose decay warms up as min(decay, (1 + t) / (10 + t))
    after t updates (TensorFlow's ExponentialMovingAverage with num_updates), so that a short run,
    or one of few steps per epoch, is not averaged toward its untrained start."""

    def avg(averaged: torch.Tensor, current: torch.Tensor, num_averaged) -> torch.Tensor:
        t = float(num_averaged)
        d = min(decay, (1 + t) / (10 + t))
        return averaged + (current - averaged) * (1 - d)

    return avg


def _write_checkpoint(path: Path, state: dict) -> None:
    """`state` to `path` by `torch.save` through a temporary file and a rename (a kill leaves the previous one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def _read_checkpoint(path: Path, settings: dict) -> dict:
    """A checkpoint written by `train` with the same `settings`, or a ValueError saying what to do."""
    try:
        # weights_only: tensors, numbers, strings, lists and dicts only (no arbitrary objects).
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"checkpoint {path} cannot be read ({e}); delete it to start training afresh") from None
    if not isinstance(state, dict) or state.get("version") != CHECKPOINT_VERSION:
        raise ValueError(
            f"checkpoint {path} is of another version; delete it to start training afresh "
            f"(this hashsearch writes version {CHECKPOINT_VERSION})"
        )
    if state.get("settings") != settings:
        raise ValueError(
            f"checkpoint {path} was written with other training settings ({state.get('settings')}, now {settings}); "
            "delete it to start afresh, or run with the settings it was written with"
        )
    return state
