"""The classic baselines of the hashing papers' tables: SKLSH, SH, SpH, density-sensitive hashing, CCA-ITQ, KSH, SDH.

Each is a registered `Hasher` (fit / encode / save / load), written from its paper; the linear
algebra comes from NumPy / SciPy / scikit-learn.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from hashsearch.hashing.base import Hasher, register_hasher
from hashsearch.hashing.itq import itq_rotation
from hashsearch.hashing.pca import pca
from hashsearch.validation import check_int, check_real


def one_hot(y: np.ndarray) -> np.ndarray:
    """(n, C) 0/1 float64 matrix of 1-d class labels, or a multi-label (n, c) matrix as float64."""
    y = np.asarray(y)
    if y.ndim == 2:
        return y.astype(np.float64)
    if y.ndim != 1:
        raise ValueError(f"labels must be 1-d class ids or an (n, c) 0/1 matrix, got shape {y.shape}")
    _, ids = np.unique(y.astype(str) if y.dtype.kind == "O" else y, return_inverse=True)
    Y = np.zeros((len(y), int(ids.max()) + 1))
    Y[np.arange(len(y)), ids.reshape(-1)] = 1.0
    return Y


def _sample(n: int, m: int, seed: int) -> np.ndarray:
    """Sorted indices of min(n, m) rows drawn without replacement."""
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=min(n, m), replace=False))


class KernelFeatures:
    """RBF kernel features ``exp(-||x - a||^2 / (2 sigma^2))`` against anchors, centred (KSH, SDH)."""

    @staticmethod
    def sq_dist(X: np.ndarray, A: np.ndarray) -> np.ndarray:
        d = (X * X).sum(1)[:, None] - 2.0 * X @ A.T + (A * A).sum(1)[None, :]
        return np.maximum(d, 0.0)

    @classmethod
    def fit(cls, X: np.ndarray, n_anchors: int, seed: int) -> tuple[np.ndarray, float]:
        """Anchors (random training rows) and sigma (the mean anchor distance, as KSH's code does)."""
        anchors = X[_sample(len(X), n_anchors, seed)].astype(np.float64)
        sub = X[_sample(len(X), 1000, seed + 1)].astype(np.float64)
        sigma = float(np.sqrt(cls.sq_dist(sub, anchors)).mean()) or 1.0
        return anchors, sigma

    @classmethod
    def transform(cls, X: np.ndarray, anchors: np.ndarray, sigma: float) -> np.ndarray:
        return np.exp(-cls.sq_dist(X.astype(np.float64), anchors) / (2.0 * sigma * sigma))


@register_hasher("sklsh")
class SKLSH(Hasher):
    """Locality-sensitive binary codes from shift-invariant kernels (Raginsky & Lazebnik, NIPS 2009).

    Bit j = ``sign(cos(w_j . x + b_j) + t_j)`` with random Fourier features of a Gaussian kernel
    (``w ~ N(0, gamma I)``, ``b ~ U[0, 2 pi]``) and thresholds ``t ~ U[-1, 1]``; the expected
    normalised Hamming distance is a monotone function of the kernel value.

    Parameters
    ----------
    n_bits, seed : int
        Code length; seed of the random draws.
    gamma : float or None
        Kernel bandwidth ``k(x, y) = exp(-gamma ||x - y||^2 / 2)``; None = 1 / (median squared
        distance between training rows / 2), i.e. a kernel width matched to the data.
    """

    _state_names: ClassVar[tuple[str, ...]] = ("mean_", "weights_", "phases_", "thresholds_")
    data_independent: ClassVar[bool] = True

    def __init__(self, n_bits: int = 64, seed: int = 0, gamma: float | None = None) -> None:
        self.n_bits = n_bits
        self.seed = seed
        self.gamma = gamma

    def _fit(self, X, y):
        if self.gamma is not None:
            check_real("gamma", self.gamma, low=0, low_open=True)
        rng = np.random.default_rng(self.seed)
        mean = X.mean(0, dtype=np.float64)
        gamma = self.gamma
        if gamma is None:
            sub = X[_sample(len(X), 500, self.seed)].astype(np.float64) - mean
            d2 = KernelFeatures.sq_dist(sub, sub)
            med = float(np.median(d2[np.triu_indices(len(sub), 1)])) if len(sub) > 1 else 1.0
            gamma = 2.0 / med if med > 0 else 1.0
        self.mean_ = mean.astype(np.float32)
        self.weights_ = (rng.standard_normal((X.shape[1], self.n_bits)) * np.sqrt(gamma)).astype(np.float32)
        self.phases_ = rng.uniform(0, 2 * np.pi, self.n_bits).astype(np.float32)
        self.thresholds_ = rng.uniform(-1, 1, self.n_bits).astype(np.float32)

    def _bits(self, X):
        return np.cos((X - self.mean_) @ self.weights_ + self.phases_) + self.thresholds_ > 0


@register_hasher("sh")
class SpectralHashing(Hasher):
    """Spectral hashing (Weiss, Torralba & Fergus, NIPS 2008).

    PCA to ``min(n_bits, d)`` dimensions; assuming a uniform distribution on the box
    [min_i, max_i] of each PCA direction, the Laplacian eigenfunctions are
    ``sin(pi/2 + k pi (v_i - min_i) / (max_i - min_i))`` with eigenvalue proportional to
    ``(k / (max_i - min_i))^2``; the `n_bits` with the smallest eigenvalues (k >= 1) are
    thresholded at 0.

    Parameters
    ----------
    n_bits, seed : int
        Code length; `seed` unused (SH is deterministic).
    """

    _state_names: ClassVar[tuple[str, ...]] = ("mean_", "components_", "low_", "span_", "mode_dim_", "mode_k_")

    def __init__(self, n_bits: int = 64, seed: int = 0) -> None:
        self.n_bits = n_bits
        self.seed = seed

    def _fit(self, X, y):
        n_pc = min(self.n_bits, X.shape[1])
        mean, comps = pca(X, n_pc)
        V = (X.astype(np.float64) - mean) @ comps
        eps = np.finfo(np.float32).eps
        low, high = V.min(0) - eps, V.max(0) + eps
        span = high - low
        dims = np.repeat(np.arange(n_pc), self.n_bits)
        ks = np.tile(np.arange(1, self.n_bits + 1), n_pc)
        omega = (ks / span[dims]) ** 2
        pick = np.lexsort((dims, omega))[: self.n_bits]
        self.mean_, self.components_ = mean.astype(np.float32), comps.astype(np.float32)
        self.low_, self.span_ = low.astype(np.float64), span.astype(np.float64)
        self.mode_dim_, self.mode_k_ = dims[pick].astype(np.int64), ks[pick].astype(np.int64)

    def _bits(self, X):
        V = (X - self.mean_).astype(np.float64) @ self.components_.astype(np.float64)
        t = (V[:, self.mode_dim_] - self.low_[self.mode_dim_]) / self.span_[self.mode_dim_]
        return np.sin(np.pi / 2 + self.mode_k_ * np.pi * t) > 0


@register_hasher("sph")
class SphericalHashing(Hasher):
    """Spherical hashing (Heo, Lee, He, Chang & Yoon, CVPR 2012).

    Bit k = 1 when x lies inside hypersphere k (centre p_k, radius t_k). Training on a sample
    alternates: each radius is set so its sphere holds half the points (bit balance), then the
    centres move apart or together by a force proportional to how far each pair's overlap
    o_ij deviates from a quarter of the points (independence), until the overlaps' mean and
    standard deviation are within 10% / 15% of m/4 (the paper's stopping rule). Retrieval here
    uses the plain Hamming distance (the paper's spherical Hamming distance divides by the
    number of common 1s; our indexes rank by Hamming distance).

    Parameters
    ----------
    n_bits, seed : int
        Number of spheres; seed of the sample and initial centres.
    n_iter : int
        Maximum number of centre updates.
    n_samples : int
        Training rows used to fit the spheres.
    """

    _state_names: ClassVar[tuple[str, ...]] = ("centres_", "radii_")

    def __init__(self, n_bits: int = 64, seed: int = 0, n_iter: int = 50, n_samples: int = 2000) -> None:
        self.n_bits = n_bits
        self.seed = seed
        self.n_iter = n_iter
        self.n_samples = n_samples

    def _fit(self, X, y):
        check_int("n_iter", self.n_iter, low=0)
        check_int("n_samples", self.n_samples, low=2)
        S = X[_sample(len(X), self.n_samples, self.seed)].astype(np.float64)
        m = len(S)
        rng = np.random.default_rng(self.seed)
        P = S[rng.choice(m, self.n_bits, replace=len(S) < self.n_bits)] + 1e-3 * rng.standard_normal(
            (self.n_bits, S.shape[1])
        )
        q = m / 4.0
        for _ in range(int(self.n_iter) + 1):
            D = np.sqrt(KernelFeatures.sq_dist(S, P))
            t = np.median(D, axis=0)
            B = (D <= t).astype(np.float64)
            O = B.T @ B
            off = O[~np.eye(self.n_bits, dtype=bool)]
            if off.size == 0 or (abs(off.mean() - q) <= 0.1 * q and off.std() <= 0.15 * q):
                break
            F = 0.5 * (O - q) / q
            np.fill_diagonal(F, 0.0)
            # force on p_i: mean over j of F_ij (p_i - p_j)
            P = P + (F.sum(1)[:, None] * P - F @ P) / self.n_bits
        self.centres_ = P.astype(np.float32)
        self.radii_ = t.astype(np.float32)

    def _bits(self, X):
        d2 = KernelFeatures.sq_dist(X.astype(np.float64), self.centres_.astype(np.float64))
        return d2 <= self.radii_.astype(np.float64) ** 2


@register_hasher("dsh-density")
class DensitySensitiveHashing(Hasher):
    """Density sensitive hashing (Jin, Li, Lin, Cai, Chen & He, IEEE T-Cybernetics 2014).

    k-means with ``alpha * n_bits`` groups; for each centre and each of its `r` nearest centres,
    the candidate projection is the hyperplane bisecting the two centres
    (w = mu_i - mu_j, threshold at the midpoint); the `n_bits` candidates with the largest
    entropy of their bit on the training data (most balanced splits) are kept. Registered as
    'dsh-density' so it does not clash with deep supervised hashing ('dsh').

    Parameters
    ----------
    n_bits, seed : int
        Code length; k-means seed.
    alpha : float
        Groups per bit (the paper uses 1.5).
    r : int
        Adjacent groups considered per centre (the paper uses 3).
    """

    _state_names: ClassVar[tuple[str, ...]] = ("projection_", "offset_")

    def __init__(self, n_bits: int = 64, seed: int = 0, alpha: float = 1.5, r: int = 3) -> None:
        self.n_bits = n_bits
        self.seed = seed
        self.alpha = alpha
        self.r = r

    def _fit(self, X, y):
        from sklearn.cluster import KMeans

        check_real("alpha", self.alpha, low=0, low_open=True)
        check_int("r", self.r, low=1)
        k = int(min(len(X), max(2, np.ceil(self.alpha * self.n_bits))))
        S = X[_sample(len(X), 10000, self.seed)].astype(np.float64)
        km = KMeans(n_clusters=min(k, len(S)), n_init=1, max_iter=50, random_state=self.seed).fit(S)
        C = km.cluster_centers_
        D = KernelFeatures.sq_dist(C, C)
        np.fill_diagonal(D, np.inf)
        pairs = set()
        for i in range(len(C)):
            for j in np.argsort(D[i])[: int(self.r)]:
                if np.isfinite(D[i, j]):
                    pairs.add((min(i, int(j)), max(i, int(j))))
        pairs = sorted(pairs)
        W = np.stack([C[i] - C[j] for i, j in pairs], 1)
        off = np.array([(C[i] - C[j]) @ (C[i] + C[j]) / 2 for i, j in pairs])
        p = ((S @ W - off) > 0).mean(0).clip(1e-12, 1 - 1e-12)
        entropy = -(p * np.log(p) + (1 - p) * np.log(1 - p))
        order = np.argsort(-entropy, kind="stable")
        if len(order) < self.n_bits:
            # fewer candidate pairs than bits: fill with random hyperplanes through the mean
            rng = np.random.default_rng(self.seed)
            extra = rng.standard_normal((X.shape[1], self.n_bits - len(order)))
            mu = S.mean(0)
            W = np.concatenate([W, extra], 1)
            off = np.concatenate([off, mu @ extra])
            order = np.concatenate([order, np.arange(len(pairs), W.shape[1])])
        keep = order[: self.n_bits]
        self.projection_ = W[:, keep].astype(np.float32)
        self.offset_ = off[keep].astype(np.float32)

    def _bits(self, X):
        return X @ self.projection_ - self.offset_ > 0


@register_hasher("cca-itq")
class CCAITQ(Hasher):
    """CCA-ITQ (Gong, Lazebnik, Gordo & Perronnin, TPAMI 2013): ITQ on the CCA projection of the features with the labels.

    The projection W solves the regularised CCA eigenproblem
    ``Cxy Cyy^-1 Cyx w = r^2 (Cxx + reg I) w`` between features and one-hot labels; its top
    `n_bits` directions are scaled by their correlation r (as in the paper), then ITQ learns the
    rotation. With C classes only C - 1 directions carry label correlation; the rest still come
    from the eigenproblem (near-zero r).

    Parameters
    ----------
    n_bits, seed : int
        Code length (<= feature dimension); seed of ITQ's initial rotation.
    reg : float
        Ridge added to Cxx and Cyy, relative to the mean of their diagonals.
    n_iter : int
        ITQ iterations.
    """

    supervised: ClassVar[bool] = True
    _state_names: ClassVar[tuple[str, ...]] = ("mean_", "projection_")

    def __init__(self, n_bits: int = 64, seed: int = 0, reg: float = 1e-4, n_iter: int = 50) -> None:
        self.n_bits = n_bits
        self.seed = seed
        self.reg = reg
        self.n_iter = n_iter

    def _fit(self, X, y):
        from scipy.linalg import eigh

        check_real("reg", self.reg, low=0)
        check_int("n_iter", self.n_iter, low=0)
        if self.n_bits > X.shape[1]:
            raise ValueError(
                f"n_bits={self.n_bits} is larger than the {X.shape[1]} feature dimensions; "
                f"CCA-ITQ needs n_bits <= n_features"
            )
        Y = one_hot(y)
        mx = X.mean(0, dtype=np.float64)
        Xc = X.astype(np.float64) - mx
        Yc = Y - Y.mean(0)
        n = len(X)
        Cxx, Cyy, Cxy = Xc.T @ Xc / n, Yc.T @ Yc / n, Xc.T @ Yc / n
        Cxx += self.reg * max(np.trace(Cxx) / len(Cxx), 1e-12) * np.eye(len(Cxx))
        Cyy += max(self.reg, 1e-8) * max(np.trace(Cyy) / len(Cyy), 1e-12) * np.eye(len(Cyy))
        M = Cxy @ np.linalg.solve(Cyy, Cxy.T)
        evals, evecs = eigh((M + M.T) / 2, Cxx)
        order = np.argsort(evals)[::-1][: self.n_bits]
        r = np.sqrt(np.clip(evals[order], 0, None))
        W = evecs[:, order] * np.maximum(r, 1e-6)
        R, _ = itq_rotation(Xc @ W, self.n_iter, self.seed)
        self.mean_ = mx.astype(np.float32)
        self.projection_ = (W @ R).astype(np.float32)

    def _bits(self, X):
        return (X - self.mean_) @ self.projection_ > 0


class _KernelHasher(Hasher):
    """A hasher whose bit j is ``(phi(x) - phi_mean) @ projection_[:, j] > 0`` on RBF anchor features."""

    supervised: ClassVar[bool] = True
    _state_names: ClassVar[tuple[str, ...]] = ("anchors_", "sigma_", "kernel_mean_", "projection_")

    def _kernel(self, X):
        return KernelFeatures.transform(X, self.anchors_.astype(np.float64), float(self.sigma_)) - self.kernel_mean_

    def _bits(self, X):
        return self._kernel(X) @ self.projection_ > 0

    def _fit_kernel(self, X, n_anchors):
        check_int("n_anchors", n_anchors, low=1)
        anchors, sigma = KernelFeatures.fit(X, n_anchors, self.seed)
        self.anchors_, self.sigma_ = anchors.astype(np.float32), np.float64(sigma)
        K = KernelFeatures.transform(X, anchors, sigma)
        self.kernel_mean_ = K.mean(0)
        return K - self.kernel_mean_


@register_hasher("ksh")
class KSH(_KernelHasher):
    """Supervised hashing with kernels (Liu, Wang, Ji, Jiang & Chang, CVPR 2012).

    Bit k = ``sign(a_k . kbar(x))`` on zero-centred RBF kernel features against `n_anchors`
    anchors. On `n_labelled` labelled rows with pairwise S (+1 same class, -1 otherwise), the
    code inner products should fit ``n_bits * S``; bits are learned greedily: for bit k with
    residual ``R_k = n_bits S - sum_{t<k} b_t b_t^T``, a_k starts at the spectral relaxation
    (top generalised eigenvector of ``Kbar^T R_k Kbar`` w.r.t. ``Kbar^T Kbar``) and is refined
    by minimising the smoothed objective ``-phi(Kbar a)^T R_k phi(Kbar a)``,
    ``phi(x) = 2 / (1 + exp(-x)) - 1``, with L-BFGS.

    Parameters
    ----------
    n_bits, seed : int
        Code length; seed of anchors and labelled sample.
    n_anchors, n_labelled : int
        Anchors m (paper: 300) and labelled rows l (paper: 1000 or 2000).
    n_iter : int
        L-BFGS iterations per bit.
    """

    def __init__(
        self, n_bits: int = 64, seed: int = 0, n_anchors: int = 300, n_labelled: int = 1000, n_iter: int = 50
    ) -> None:
        self.n_bits = n_bits
        self.seed = seed
        self.n_anchors = n_anchors
        self.n_labelled = n_labelled
        self.n_iter = n_iter

    def _fit(self, X, y):
        from scipy.linalg import eigh
        from scipy.optimize import minimize
        from scipy.special import expit

        check_int("n_labelled", self.n_labelled, low=2)
        check_int("n_iter", self.n_iter, low=0)
        self._fit_kernel(X, self.n_anchors)
        idx = _sample(len(X), self.n_labelled, self.seed + 2)
        K = self._kernel(X[idx])
        Y = one_hot(np.asarray(y)[idx])
        S = np.where(Y @ Y.T > 0, 1.0, -1.0)
        R = self.n_bits * S
        KK = K.T @ K + 1e-6 * np.eye(K.shape[1])
        A = np.zeros((K.shape[1], self.n_bits))
        l = len(idx)

        def obj(a, R):
            p = 2.0 * expit(K @ a) - 1.0
            Rp = R @ p
            grad = K.T @ (-2.0 * Rp * (1 - p * p) / 2.0)
            return -p @ Rp, grad

        for k in range(self.n_bits):
            M = K.T @ R @ K
            evals, evecs = eigh((M + M.T) / 2, KK, subset_by_index=[K.shape[1] - 1, K.shape[1] - 1])
            a0 = evecs[:, 0] * np.sqrt(l / max(evecs[:, 0] @ KK @ evecs[:, 0], 1e-12))
            a = a0
            if self.n_iter:
                res = minimize(obj, a0, args=(R,), jac=True, method="L-BFGS-B", options={"maxiter": int(self.n_iter)})
                # keep the refinement only if it beats the spectral start on the discrete objective
                b_new, b_old = np.sign(K @ res.x), np.sign(K @ a0)
                if b_new @ R @ b_new >= b_old @ R @ b_old:
                    a = res.x
            b = np.where(K @ a >= 0, 1.0, -1.0)
            R = R - np.outer(b, b)
            A[:, k] = a
        self.projection_ = A

    def _bits(self, X):
        return self._kernel(X) @ self.projection_ >= 0


@register_hasher("sdh")
class SDH(_KernelHasher):
    """Supervised discrete hashing (Shen, Shen, Liu & Shen, CVPR 2015).

    Codes B in {-1, 1} are learned jointly with a linear classifier W (B -> labels) and a
    kernel encoder P (RBF anchor features -> B), minimising
    ``||Y - W^T B||^2 + lam ||W||^2 + nu ||B - P^T phi(X)||^2`` by alternating the closed-form
    W and P steps with the discrete cyclic coordinate descent (DCC) B step, one bit row at a
    time: ``z = sign(q - B'^T W' w)`` with ``Q = W Y + nu P^T phi(X)``.

    Parameters
    ----------
    n_bits, seed : int
        Code length; seed of anchors and initial codes.
    n_anchors : int
        RBF anchors (paper: 1000).
    lam, nu : float
        Classifier ridge (paper 1) and encoder weight (paper 1e-5).
    n_iter, n_dcc : int
        Outer iterations (paper 5) and DCC sweeps per B step.
    """

    def __init__(
        self,
        n_bits: int = 64,
        seed: int = 0,
        n_anchors: int = 1000,
        lam: float = 1.0,
        nu: float = 1e-5,
        n_iter: int = 5,
        n_dcc: int = 3,
    ) -> None:
        self.n_bits = n_bits
        self.seed = seed
        self.n_anchors = n_anchors
        self.lam = lam
        self.nu = nu
        self.n_iter = n_iter
        self.n_dcc = n_dcc

    def _fit(self, X, y):
        check_real("lam", self.lam, low=0)
        check_real("nu", self.nu, low=0)
        check_int("n_iter", self.n_iter, low=1)
        check_int("n_dcc", self.n_dcc, low=1)
        Phi = self._fit_kernel(X, self.n_anchors).T  # (m, n)
        Y = one_hot(y).T  # (C, n)
        L = self.n_bits
        rng = np.random.default_rng(self.seed)
        B = np.where(rng.standard_normal((L, Phi.shape[1])) >= 0, 1.0, -1.0)
        PhiPhi = Phi @ Phi.T + 1e-6 * np.eye(len(Phi))
        P = np.linalg.solve(PhiPhi, Phi @ B.T)
        for _ in range(int(self.n_iter)):
            W = np.linalg.solve(B @ B.T + self.lam * np.eye(L), B @ Y.T)  # (L, C)
            Q = W @ Y + self.nu * (P.T @ Phi)  # (L, n)
            for _ in range(int(self.n_dcc)):
                for l in range(L):
                    rest = np.arange(L) != l
                    z = Q[l] - B[rest].T @ (W[rest] @ W[l])
                    B[l] = np.where(z >= 0, 1.0, -1.0)
            P = np.linalg.solve(PhiPhi, Phi @ B.T)
        self.projection_ = P
        self.classifier_ = W
