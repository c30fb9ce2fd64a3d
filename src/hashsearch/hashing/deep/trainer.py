"""The one training loop every deep hasher uses: mini-batch Adam over cached features."""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from hashsearch.validation import check_int, check_real

logger = logging.getLogger(__name__)


@dataclass
class TrainHistory:
    """What a training run did: the mean loss of each epoch (weighted by batch size) and its wall time."""

    epoch_loss: list[float] = field(default_factory=list)
    seconds: float = 0.0


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
        Show a tqdm bar of epochs with the running loss (hidden anyway when stderr is not a TTY).
    cosine : bool
        Anneal the learning rate to 0 over the epochs (cosine), as for training a network from scratch.
    """
    from tqdm.auto import tqdm

    check_int("epochs", epochs, low=1)
    check_int("batch_size", batch_size, low=1)
    check_real("lr", lr, low=0, low_open=True, finite=True)
    check_real("weight_decay", weight_decay, low=0, finite=True)
    check_int("log_every", log_every, low=1, allow_none=True)
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
    t0 = time.perf_counter()
    with seeded(int(seed), dev):
        model.train()
        bar = tqdm(
            range(int(epochs)),
            desc=f"training {type(model).__name__}",
            unit="epoch",
            disable=None if progress else True,
            leave=False,
        )
        for epoch in bar:
            order = torch.randperm(n, generator=shuffle).to(dev)
            total = torch.zeros((), dtype=torch.float64, device=dev)
            for start in range(0, n, int(batch_size)):
                idx = order[start : start + int(batch_size)]
                loss = loss_fn(model(X[idx]), y[idx])
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
                total += loss.detach().double() * idx.numel()
            mean = float(total) / n
            if not math.isfinite(mean):
                raise FloatingPointError(
                    f"training loss became {mean} in epoch {epoch + 1}; lower lr (got {lr}) "
                    f"or check the features for extreme values"
                )
            history.epoch_loss.append(mean)
            if schedule is not None:
                schedule.step()
            bar.set_postfix(loss=f"{mean:.4f}")
            if log_every is not None and ((epoch + 1) % log_every == 0 or epoch + 1 == epochs):
                logger.info("epoch %d/%d  loss %.5f", epoch + 1, epochs, mean)
        bar.close()
    model.eval()
    history.seconds = time.perf_counter() - t0
    return history
