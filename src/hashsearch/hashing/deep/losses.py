"""Hashing losses (one registry). A deep hasher names its loss; the training loop only calls it.

Interface: a loss is an `nn.Module` built as ``Loss(n_bits=..., n_classes=..., **params)``
(it may ignore either) whose ``forward(output, labels)`` takes the head's `HeadOutput` for a
batch and that batch's labels (int64 class ids, shape (b,)) and returns a scalar tensor.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
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
    `label_smoothing` (attribute, default 0) softens the targets (Szegedy et al., CVPR 2016).
    """

    label_smoothing = 0.0

    def forward(self, output: HeadOutput, labels: torch.Tensor) -> torch.Tensor:
        if output.logits is None:
            raise ValueError(
                "loss 'cross-entropy' needs class logits, but the head returned logits=None; "
                "use a head with a classification layer, such as 'latent-sigmoid'"
            )
        return F.cross_entropy(output.logits, labels, label_smoothing=float(self.label_smoothing))


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
    plus lambda * mean (|u| - 1)^2 quantization (paper lambda = 1e-4). `label_smoothing` (attribute,
    default 0) moves each centre bit's target eps/2 toward 1/2."""

    label_smoothing = 0.0

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
        if self.label_smoothing:
            target = target * (1 - self.label_smoothing) + self.label_smoothing / 2
        p = ((u + 1) / 2).clamp(1e-6, 1 - 1e-6)
        return F.binary_cross_entropy(p, target) + self.lam * ((u.abs() - 1) ** 2).mean()


# -- unsupervised losses ------------------------------------------------------------------------
#
# They learn from pseudo-targets instead of class labels: the unsupervised hasher
# (`deep.unsupervised.UnsupervisedDeepHasher`) passes each row's target vector, by default the
# centred training feature, and the loss trains codes whose cosine similarities follow those of
# the targets. A loss with a `pseudo_targets(features)` method makes its own targets from the
# whole training set once before training (SSDH's thresholds, spectral clusters). 1-d class ids
# are read as one-hot vectors (cosine 1 within a class, 0 across), so with labels these losses
# are supervised ones.


def _target_vectors(labels: torch.Tensor) -> torch.Tensor:
    """(b, t) float targets: (b, t) float rows as they are; 1-d class ids as one-hot rows."""
    if labels.dim() == 1:
        return F.one_hot(labels.long(), int(labels.max()) + 1 if labels.numel() else 1).float()
    return labels.float()


def _cosine_matrix(v: torch.Tensor) -> torch.Tensor:
    """(b, b) cosine similarities of the rows of `v` (a zero row has similarity 0 with all)."""
    v = F.normalize(v, dim=1, eps=1e-12)
    return v @ v.T


class _SignStraightThrough(torch.autograd.Function):
    """GreedyHash's hash layer: sign(h) forward, the gradient passed through unchanged backward."""

    @staticmethod
    def forward(ctx, h):
        return torch.where(h >= 0, 1.0, -1.0).to(h.dtype)

    @staticmethod
    def backward(ctx, grad):
        return grad


class _BiHalf(torch.autograd.Function):
    """BiHalf's bi-half layer: per bit, the larger half of the batch gets +1 and the rest -1
    (the optimal transport of the batch's values onto a half/half Bernoulli, maximising each bit's
    entropy); backward passes the gradient plus ``gamma * (u - b) / numel``."""

    @staticmethod
    def forward(ctx, u, gamma):
        n = u.shape[0]
        order = u.argsort(dim=0, descending=True, stable=True)
        half = torch.cat([u.new_ones(n // 2, u.shape[1]), -u.new_ones(n - n // 2, u.shape[1])])
        b = torch.empty_like(u).scatter_(0, order, half)
        ctx.save_for_backward(u, b)
        ctx.gamma = gamma
        return b

    @staticmethod
    def backward(ctx, grad):
        u, b = ctx.saved_tensors
        return grad + ctx.gamma * (u - b) / b.numel(), None


def _similarity_mse(codes: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of the codes' and the targets' cosine similarities over all pairs of the batch."""
    return F.mse_loss(_cosine_matrix(codes), _cosine_matrix(_target_vectors(targets).to(codes.dtype)))


@register_loss("greedyhash-unsup")
class GreedyHashUnsupLoss(HashLoss):
    """GreedyHash, unsupervised (Su, Zhang, Han & Tian, "Greedy Hash: towards fast optimization for
    accurate hash coding in CNN", NeurIPS 2018).

    ``b = sign(z)`` of the head's pre-activation, with the gradient passed straight through; the
    loss keeps the codes' pairwise cosine similarity equal to the targets' (the features') and
    adds ``alpha * mean |(|z| - 1)^3|``, the paper's penalty pulling z toward +-1. The paper's code
    pairs the two halves of a batch; here every pair of the batch counts.
    """

    def __init__(self, n_bits: int, n_classes: int | None = None, alpha: float = 0.1) -> None:
        super().__init__(n_bits, n_classes)
        self.alpha = float(alpha)

    def forward(self, output: HeadOutput, labels: torch.Tensor) -> torch.Tensor:
        z = output.pre_activation
        b = _SignStraightThrough.apply(z)
        return _similarity_mse(b, labels) + self.alpha * (z.abs() - 1).pow(3).abs().mean()


@register_loss("bihalf")
class BiHalfLoss(HashLoss):
    """BiHalf (Li & van Gemert, "Deep unsupervised image hashing by maximizing bit entropy", AAAI 2021).

    The bi-half layer codes the head's pre-activation z of a batch: per bit, the upper half of
    the rows is +1 and the lower half -1, so every bit is balanced (maximum entropy); its
    backward adds ``gamma * (z - b) / numel`` to the straight-through gradient (paper: gamma = 6).
    The loss keeps the codes' pairwise cosine similarity equal to the targets'. At encoding the
    bit is z >= 0. The paper's code pairs the two halves of a batch; here every pair counts.
    """

    def __init__(self, n_bits: int, n_classes: int | None = None, gamma: float = 6.0) -> None:
        super().__init__(n_bits, n_classes)
        self.gamma = float(gamma)

    def forward(self, output: HeadOutput, labels: torch.Tensor) -> torch.Tensor:
        b = _BiHalf.apply(output.pre_activation, self.gamma)
        return _similarity_mse(b, labels)


def _ssdh_thresholds(distances: np.ndarray, alpha: float, beta: float) -> tuple[float, float]:
    """SSDH's (d_left, d_right) from a sample of pairwise cosine distances: the distribution is
    read as two half Gaussians meeting at its mode m, with standard deviations s_l (left) and s_r
    (right); pairs nearer than ``m - alpha * s_l`` are similar, farther than ``m + beta * s_r`` dissimilar."""
    d = np.asarray(distances, np.float64)
    counts, edges = np.histogram(d, bins=100)
    mode = float((edges[counts.argmax()] + edges[counts.argmax() + 1]) / 2)
    left, right = d[d <= mode], d[d >= mode]
    s_l = float(np.sqrt(np.mean((left - mode) ** 2))) if left.size else 0.0
    s_r = float(np.sqrt(np.mean((right - mode) ** 2))) if right.size else 0.0
    return mode - alpha * s_l, mode + beta * s_r


@register_loss("ssdh")
class SSDHLoss(HashLoss):
    """SSDH (Yang, Deng, Liu, Liu & Tao, "Semantic structure-based unsupervised deep hashing", IJCAI 2018).

    Pseudo-similarity from the distribution of the targets' (features') pairwise cosine
    distances: the pairs nearer than ``m - alpha * s_l`` are similar (+1), those farther than
    ``m + beta * s_r`` dissimilar (-1), the rest ignored (see `_ssdh_thresholds`); the loss is the
    mean over the labelled pairs of ``(u_i . u_j / n_bits - s_ij)^2`` on the tanh codes.
    `pseudo_targets` estimates the thresholds once from (a seeded sample of) the whole training
    set, as the paper does; without it they come from each batch.
    """

    #: Rows sampled from the training set to estimate the thresholds.
    sample_rows = 2000

    def __init__(
        self, n_bits: int, n_classes: int | None = None, alpha: float = 2.0, beta: float = 0.0, seed: int = 0
    ) -> None:
        super().__init__(n_bits, n_classes)
        self.alpha, self.beta, self.seed = float(alpha), float(beta), int(seed)
        self.thresholds: tuple[float, float] | None = None

    def pseudo_targets(self, features: np.ndarray) -> np.ndarray:
        """Set the thresholds from the training `features` (n, d) and return them as the targets."""
        rng = np.random.default_rng(self.seed)
        rows = np.asarray(features, np.float64)
        if len(rows) > self.sample_rows:
            rows = rows[np.sort(rng.choice(len(rows), self.sample_rows, replace=False))]
        v = rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)
        self.thresholds = _ssdh_thresholds(1 - (v @ v.T)[np.triu_indices(len(v), 1)], self.alpha, self.beta)
        return features

    def forward(self, output: HeadOutput, labels: torch.Tensor) -> torch.Tensor:
        u = _codes(output, "ssdh")
        d = 1 - _cosine_matrix(_target_vectors(labels).to(u.dtype))
        if self.thresholds is None:
            pairs = torch.triu_indices(len(d), len(d), 1, device=d.device)
            low, high = _ssdh_thresholds(d[pairs[0], pairs[1]].detach().cpu().numpy(), self.alpha, self.beta)
        else:
            low, high = self.thresholds
        s = torch.where(d < low, 1.0, torch.where(d > high, -1.0, 0.0)).to(u.dtype)
        labelled = (s != 0).to(u.dtype)
        return (((u @ u.T) / self.n_bits - s) ** 2 * labelled).sum() / labelled.sum().clamp_min(1)


def spectral_clusters(
    features: np.ndarray, n_clusters: int, n_neighbors: int, seed: int = 0, max_rows: int = 5000
) -> np.ndarray:
    """(n,) int64 cluster ids of the rows of `features` (n, d) by spectral clustering of their cosine kNN graph.

    Spectral clustering (Ng, Jordan & Weiss, NIPS 2001; scikit-learn's `SpectralClustering` with
    a symmetric `n_neighbors`-nearest-neighbour graph and QR assignment) of at most `max_rows`
    rows drawn with `seed`; every other row takes the cluster of its most cosine-similar drawn row.
    """
    from sklearn.cluster import SpectralClustering

    v = np.asarray(features, np.float64)
    v = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
    n = len(v)
    if n <= n_clusters:
        return np.arange(n, dtype=np.int64) % max(n_clusters, 1)
    rng = np.random.default_rng(seed)
    drawn = np.arange(n) if n <= max_rows else np.sort(rng.choice(n, max_rows, replace=False))
    model = SpectralClustering(
        n_clusters,
        affinity="nearest_neighbors",
        n_neighbors=min(n_neighbors, len(drawn) - 1),
        random_state=seed,
        assign_labels="cluster_qr",
    )
    labels = np.empty(n, np.int64)
    with warnings.catch_warnings():
        # A kNN graph of well-separated groups is often not connected; the clustering handles it.
        warnings.filterwarnings("ignore", "Graph is not fully connected", UserWarning)
        labels[drawn] = model.fit_predict(v[drawn])
    rest = np.setdiff1d(np.arange(n), drawn)
    for start in range(0, len(rest), 4096):
        rows = rest[start : start + 4096]
        labels[rows] = labels[drawn[(v[rows] @ v[drawn].T).argmax(axis=1)]]
    return labels


def eigengap_clusters(
    features: np.ndarray, n_neighbors: int, max_clusters: int = 20, seed: int = 0, max_rows: int = 2000
) -> int:
    """How many clusters the rows of `features` (n, d) form: the eigengap of their cosine kNN graph.

    The graph is `spectral_clusters`' (a symmetric `n_neighbors`-nearest-neighbour graph of the
    unit-length rows, at most `max_rows` rows drawn with `seed`); k is the count in
    2..`max_clusters` (fewer with few rows) after which the normalised Laplacian's sorted
    eigenvalues jump the most (von Luxburg, "A tutorial on spectral clustering", 2007, sec. 8.3).
    Returns an int >= 2; 2 when there are fewer than 4 rows.
    """
    from scipy.sparse.csgraph import laplacian
    from sklearn.neighbors import kneighbors_graph

    v = np.asarray(features, np.float64)
    v = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
    n = len(v)
    if n < 4:
        return 2
    if n > max_rows:
        v = v[np.sort(np.random.default_rng(seed).choice(n, max_rows, replace=False))]
    graph = kneighbors_graph(v, min(n_neighbors, len(v) - 1), include_self=False)
    graph = 0.5 * (graph + graph.T)  # as SpectralClustering(affinity="nearest_neighbors") makes it
    eig = np.linalg.eigvalsh(laplacian(graph, normed=True).toarray())
    top = min(max_clusters, len(v) - 2)
    ks = np.arange(2, top + 1)
    return int(ks[np.argmax(eig[ks] - eig[ks - 1])])


@register_loss("bihalf-spectral")
class BiHalfSpectralLoss(BiHalfLoss):
    """BiHalf's layer and loss (Li & van Gemert, AAAI 2021) on pseudo-labels from spectral clustering.

    `pseudo_targets` clusters the training features once (`spectral_clusters`: `n_clusters`
    clusters of the cosine `n_neighbors`-NN graph) and returns each row's cluster as a one-hot
    target, so the codes of a cluster are pulled together (cosine 1) and those of different
    clusters apart (cosine 0). Pseudo-labels from clustering deep features as the supervision of
    a hashing network follow Hu et al., "Pseudo label based unsupervised deep discriminative
    hashing for image retrieval", ACM MM 2017 (k-means there); the spectral graph and the
    bi-half layer are our choice.
    """

    def __init__(
        self,
        n_bits: int,
        n_classes: int | None = None,
        gamma: float = 3.0,
        n_clusters: int | str = 10,
        n_neighbors: int = 5,
        seed: int = 0,
    ) -> None:
        super().__init__(n_bits, n_classes, gamma)
        self.n_clusters, self.n_neighbors, self.seed = n_clusters, n_neighbors, int(seed)

    def pseudo_targets(self, features: np.ndarray) -> np.ndarray:
        """(n, n_clusters) float32 one-hot spectral cluster of each training row.

        `n_clusters` "auto" takes the count from the data (`eigengap_clusters`); the count used
        is kept as `n_clusters_`. Raises ValueError when `n_clusters` is neither an integer >= 2
        nor "auto", or `n_neighbors` is not >= 1.
        """
        from hashsearch.validation import check_int

        nn_ = check_int("n_neighbors", self.n_neighbors, low=1)
        if isinstance(self.n_clusters, str) and self.n_clusters == "auto":
            k = eigengap_clusters(features, nn_, seed=self.seed)
        else:
            try:
                k = check_int("n_clusters", self.n_clusters, low=2)
            except (TypeError, ValueError) as e:
                raise ValueError(f"{e}; or give n_clusters='auto' (chosen from the data by the eigengap)") from None
        self.n_clusters_ = k
        labels = spectral_clusters(features, k, nn_, self.seed)
        return np.eye(k, dtype=np.float32)[labels]
