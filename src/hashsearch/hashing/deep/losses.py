"""Hashing losses (one registry). A deep hasher names its loss; the training loop only calls it.

Interface: a loss is an `nn.Module` built as ``Loss(n_bits=..., n_classes=..., **params)``
(it may ignore either) whose ``forward(output, labels)`` takes the head's `HeadOutput` for a
batch and that batch's labels (int64 class ids, shape (b,)) and returns a scalar tensor.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from hashsearch.hashing.deep.heads import HeadOutput
from hashsearch.registry import Registry

losses: Registry[nn.Module] = Registry("loss")


#: Class decorator: register a loss module under a name (also sets `cls.name`).
register_loss = losses.register
#: Names of all registered losses.
list_losses = losses.names


def create_loss(name: str, **params: Any) -> nn.Module:
    """Build the loss registered as `name`, e.g. ``create_loss("cross-entropy", n_bits=48, n_classes=10)``."""
    return losses.create(name, **params)


class HashLoss(nn.Module):
    """Base of the registered losses: stores the code length and class count it was built for."""

    def __init__(self, n_bits: int, n_classes: int | None = None) -> None:
        super().__init__()
        self.n_bits = n_bits
        self.n_classes = n_classes

    def forward(self, output: HeadOutput, labels: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError


@register_loss("cross-entropy")
class CrossEntropyLoss(HashLoss):
    """Point-wise softmax cross-entropy on the head's class logits (DLBHC).

    Needs a head with a classifier (`output.logits` not None) and int64 class ids in [0, n_classes).
    """

    def forward(self, output: HeadOutput, labels: torch.Tensor) -> torch.Tensor:
        if output.logits is None:
            raise ValueError(
                "loss 'cross-entropy' needs class logits, but the head returned logits=None; "
                "use a head with a classification layer, such as 'latent-sigmoid'"
            )
        return F.cross_entropy(output.logits, labels)


def _similarity(labels: torch.Tensor) -> torch.Tensor:
    """(b, b) float 0/1 matrix: 1 where two rows share the class (1-d ids) or any label (multi-label rows)."""
    if labels.dim() == 1:
        return (labels[:, None] == labels[None, :]).float()
    return (labels.float() @ labels.float().T > 0).float()


def _codes(output: HeadOutput, loss: str) -> torch.Tensor:
    u = output.codes_continuous
    if u.min() < -1.0001 or u.max() > 1.0001:  # pragma: no cover - heads guarantee the range
        raise ValueError(f"loss {loss!r} needs codes in (-1, 1) from a tanh head such as 'latent-tanh'")
    return u


@register_loss("dpsh")
class DPSHLoss(HashLoss):
    """DPSH (Li, Wang & Kang, IJCAI 2016): negative log-likelihood of the pairwise labels plus quantization.

    With ``theta_ij = u_i . u_j / 2``, ``L = mean_ij(log(1 + e^theta_ij) - s_ij theta_ij) + eta mean ||u_i - sign(u_i)||^2``
    over the pairs of the mini-batch (the paper's b_i = sign(u_i) at the optimum of its B step).
    """

    def __init__(self, n_bits: int, n_classes: int | None = None, eta: float = 0.1) -> None:
        super().__init__(n_bits, n_classes)
        self.eta = float(eta)

    def forward(self, output: HeadOutput, labels: torch.Tensor) -> torch.Tensor:
        u = _codes(output, "dpsh")
        s = _similarity(labels)
        theta = 0.5 * u @ u.T
        likelihood = (F.softplus(theta) - s * theta).mean()
        quant = ((u - torch.sign(u).detach()) ** 2).sum(1).mean()
        return likelihood + self.eta * quant


def contrastive(u: torch.Tensor, s: torch.Tensor, margin: float) -> torch.Tensor:
    """DSH's contrastive term: similar pairs pulled together, dissimilar pushed beyond `margin` (squared distance)."""
    d = ((u[:, None, :] - u[None, :, :]) ** 2).sum(-1)
    return (0.5 * s * d + 0.5 * (1 - s) * F.relu(margin - d)).mean()


@register_loss("dsh")
class DSHLoss(HashLoss):
    """DSH (Liu, Wang, Shan & Chen, CVPR 2016): contrastive loss on relaxed codes + alpha * || |u| - 1 ||_1.

    The margin defaults to ``2 * n_bits`` (the paper's m = 2k) and alpha to 0.01.
    """

    def __init__(
        self, n_bits: int, n_classes: int | None = None, margin: float | None = None, alpha: float = 0.01
    ) -> None:
        super().__init__(n_bits, n_classes)
        self.margin = float(2 * n_bits if margin is None else margin)
        self.alpha = float(alpha)

    def forward(self, output: HeadOutput, labels: torch.Tensor) -> torch.Tensor:
        u = _codes(output, "dsh")
        reg = (u.abs() - 1).abs().sum(1).mean()
        return contrastive(u, _similarity(labels), self.margin) + self.alpha * reg


@register_loss("dfeh")
class DFEHLoss(HashLoss):
    """DFEH (Zhao & Liu, Electronics 2022): contrastive + lambda_q * quantization + lambda_b * bit balance.

    quantization = mean ||(|u| - 1)||^2, balance = mean over bits of (batch mean of u)^2 (each bit
    half +1, half -1). Setting a weight to 0 removes its term (the paper's ablations);
    ``use_contrastive=False`` removes the contrastive term.
    """

    def __init__(
        self,
        n_bits: int,
        n_classes: int | None = None,
        margin: float | None = None,
        lambda_q: float = 0.1,
        lambda_b: float = 0.1,
        use_contrastive: bool = True,
    ) -> None:
        super().__init__(n_bits, n_classes)
        self.margin = float(2 * n_bits if margin is None else margin)
        self.lambda_q, self.lambda_b, self.use_contrastive = float(lambda_q), float(lambda_b), bool(use_contrastive)

    def forward(self, output: HeadOutput, labels: torch.Tensor) -> torch.Tensor:
        u = _codes(output, "dfeh")
        loss = contrastive(u, _similarity(labels), self.margin) if self.use_contrastive else u.sum() * 0
        if self.lambda_q:
            loss = loss + self.lambda_q * ((u.abs() - 1) ** 2).sum(1).mean()
        if self.lambda_b:
            loss = loss + self.lambda_b * (u.mean(0) ** 2).sum()
        return loss


@register_loss("hashnet")
class HashNetLoss(HashLoss):
    """HashNet (Cao, Long, Wang & Yu, ICCV 2017): weighted pairwise cross-entropy on ``alpha * u_i . u_j``.

    Similar and dissimilar pairs are re-weighted to equal total weight (the paper's weighted
    maximum likelihood for imbalanced similarity). The paper's continuation (tanh(beta z) with
    beta growing) is not used: the head's plain tanh is beta = 1.
    """

    def __init__(self, n_bits: int, n_classes: int | None = None, alpha: float | None = None) -> None:
        super().__init__(n_bits, n_classes)
        self.alpha = float(10.0 / n_bits if alpha is None else alpha)

    def forward(self, output: HeadOutput, labels: torch.Tensor) -> torch.Tensor:
        u = _codes(output, "hashnet")
        s = _similarity(labels)
        theta = self.alpha * u @ u.T
        nll = F.softplus(theta) - s * theta
        n_pos, n_all = s.sum(), torch.tensor(float(s.numel()), device=s.device)
        w = torch.where(s > 0, n_all / n_pos.clamp_min(1), n_all / (n_all - n_pos).clamp_min(1))
        return (w * nll).sum() / w.sum()


def hash_centres(n_classes: int, n_bits: int, seed: int = 0) -> torch.Tensor:
    """CSQ's hash centres in {-1, 1}: rows of a Hadamard matrix (and its negation) when 2 * n_bits >= n_classes
    and n_bits is a power of 2; otherwise seeded Bernoulli(0.5) codes, re-drawn until pairwise distances
    are at least n_bits / 4 (as the paper's code does)."""
    import numpy as np

    if n_bits & (n_bits - 1) == 0 and 2 * n_bits >= n_classes:
        from scipy.linalg import hadamard

        H = hadamard(n_bits)
        C = np.concatenate([H, -H])[:n_classes]
    else:
        rng = np.random.default_rng(seed)
        for _ in range(1000):
            C = np.where(rng.random((n_classes, n_bits)) < 0.5, -1, 1)
            D = (C[:, None, :] != C[None, :, :]).sum(-1) + np.eye(n_classes, dtype=int) * n_bits
            if D.min() >= n_bits / 4:
                break
    return torch.as_tensor(C, dtype=torch.float32)


@register_loss("csq")
class CSQLoss(HashLoss):
    """CSQ (Yuan et al., CVPR 2020): binary cross-entropy between (u + 1) / 2 and the class's hash centre,
    plus lambda * mean (|u| - 1)^2 quantization (paper lambda = 1e-4)."""

    def __init__(self, n_bits: int, n_classes: int | None = None, lam: float = 1e-4, seed: int = 0) -> None:
        super().__init__(n_bits, n_classes)
        if n_classes is None:
            raise ValueError("loss 'csq' needs n_classes to build its hash centres")
        self.lam = float(lam)
        self.register_buffer("centres", hash_centres(int(n_classes), int(n_bits), seed))

    def forward(self, output: HeadOutput, labels: torch.Tensor) -> torch.Tensor:
        if labels.dim() != 1:
            raise ValueError("loss 'csq' takes 1-d class ids")
        u = _codes(output, "csq")
        target = (self.centres[labels] + 1) / 2
        p = ((u + 1) / 2).clamp(1e-6, 1 - 1e-6)
        return F.binary_cross_entropy(p, target) + self.lam * ((u.abs() - 1) ** 2).mean()
