"""Deep hashers with a tanh hash layer: DPSH, DSH, DFEH, HashNet, CSQ (head + loss; the one training loop).

Each trains on cached backbone features ("head" mode: the backbone is frozen); they differ only
by their registered head and loss, and the loss weights they pass on.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from hashsearch.hashing.base import register_hasher
from hashsearch.hashing.deep.base import DeepHasher

_COMMON = dict(seed=0, epochs=30, batch_size=128, lr=1e-3, weight_decay=5e-4, dropout=0.2, device="cpu")


class _TanhHasher(DeepHasher):
    head_name: ClassVar[str] = "latent-tanh"

    def _set_common(self, n_bits, seed, epochs, batch_size, lr, weight_decay, dropout, device) -> None:
        DeepHasher.__init__(self, n_bits=n_bits, seed=seed, epochs=epochs, batch_size=batch_size, lr=lr,
                            weight_decay=weight_decay, dropout=dropout, device=device)


@register_hasher("dpsh")
class DPSH(_TanhHasher):
    """DPSH (Li, Wang & Kang, "Feature learning based deep supervised hashing with pairwise labels", IJCAI 2016).

    Pairwise label likelihood from inner products of the relaxed codes, plus `eta` times the
    quantization term (loss 'dpsh'). Other parameters as in `DeepHasher`.
    """

    loss_name: ClassVar[str] = "dpsh"

    def __init__(self, n_bits: int = 48, seed: int = 0, epochs: int = 30, batch_size: int = 128, lr: float = 1e-3,
                 weight_decay: float = 5e-4, dropout: float = 0.2, device: str = "cpu", eta: float = 0.1) -> None:
        self._set_common(n_bits, seed, epochs, batch_size, lr, weight_decay, dropout, device)
        self.eta = eta

    def _loss_params(self) -> dict[str, Any]:
        return {"eta": float(self.eta)}


@register_hasher("dsh")
class DSH(_TanhHasher):
    """DSH (Liu, Wang, Shan & Chen, "Deep supervised hashing for fast image retrieval", CVPR 2016).

    Contrastive loss with margin (default 2 * n_bits) on relaxed codes, plus `alpha` * the L1
    pull toward +-1 (loss 'dsh'). Deep *supervised* hashing; density-sensitive hashing is 'dsh-density'.
    """

    loss_name: ClassVar[str] = "dsh"

    def __init__(self, n_bits: int = 48, seed: int = 0, epochs: int = 30, batch_size: int = 128, lr: float = 1e-3,
                 weight_decay: float = 5e-4, dropout: float = 0.2, device: str = "cpu",
                 margin: float | None = None, alpha: float = 0.01) -> None:
        self._set_common(n_bits, seed, epochs, batch_size, lr, weight_decay, dropout, device)
        self.margin = margin
        self.alpha = alpha

    def _loss_params(self) -> dict[str, Any]:
        return {"margin": self.margin, "alpha": float(self.alpha)}


@register_hasher("hashnet")
class HashNet(_TanhHasher):
    """HashNet (Cao, Long, Wang & Yu, "HashNet: deep learning to hash by continuation", ICCV 2017).

    Weighted pairwise cross-entropy on ``alpha * u_i . u_j`` (loss 'hashnet'); no continuation (beta = 1).
    """

    loss_name: ClassVar[str] = "hashnet"

    def __init__(self, n_bits: int = 48, seed: int = 0, epochs: int = 30, batch_size: int = 128, lr: float = 1e-3,
                 weight_decay: float = 5e-4, dropout: float = 0.2, device: str = "cpu",
                 alpha: float | None = None) -> None:
        self._set_common(n_bits, seed, epochs, batch_size, lr, weight_decay, dropout, device)
        self.alpha = alpha

    def _loss_params(self) -> dict[str, Any]:
        return {"alpha": self.alpha}


@register_hasher("csq")
class CSQ(_TanhHasher):
    """CSQ (Yuan et al., "Central similarity quantization for efficient image and video retrieval", CVPR 2020).

    Each class gets a hash centre (Hadamard rows, or seeded random codes); the codes are pulled
    to their class's centre by binary cross-entropy, plus `lam` * quantization (loss 'csq').
    """

    loss_name: ClassVar[str] = "csq"

    def __init__(self, n_bits: int = 48, seed: int = 0, epochs: int = 30, batch_size: int = 128, lr: float = 1e-3,
                 weight_decay: float = 5e-4, dropout: float = 0.2, device: str = "cpu", lam: float = 1e-4) -> None:
        self._set_common(n_bits, seed, epochs, batch_size, lr, weight_decay, dropout, device)
        self.lam = lam

    def _loss_params(self) -> dict[str, Any]:
        return {"lam": float(self.lam), "seed": int(self.seed)}


@register_hasher("dfeh")
class DFEH(DeepHasher):
    """DFEH (Zhao & Liu, "Leveraging deep features enhance and semantic-preserving hashing for image
    retrieval", Electronics 11(15):2391, 2022).

    A feature-enhancement layer (Linear + ReLU, width `hidden`) before the tanh hash layer
    (head 'feature-enhance'); loss = contrastive + `lambda_q` * quantization + `lambda_b` * bit
    balance (loss 'dfeh'). The ablations: `lambda_q` = `lambda_b` in {0, 0.1, 0.01, 0.001}, and
    each term removed (`lambda_q=0`, `lambda_b=0`, `use_contrastive=False`). The stored text of the
    paper lacks the body of section 3, so the exact layer sizes are ours.
    """

    head_name: ClassVar[str] = "feature-enhance"
    loss_name: ClassVar[str] = "dfeh"
    _param_map: ClassVar[dict[str, str]] = {
        "enhance_weight_": "enhance.weight", "enhance_bias_": "enhance.bias", **DeepHasher._param_map,
    }

    def __init__(self, n_bits: int = 48, seed: int = 0, epochs: int = 30, batch_size: int = 128, lr: float = 1e-3,
                 weight_decay: float = 5e-4, dropout: float = 0.2, device: str = "cpu", hidden: int = 512,
                 margin: float | None = None, lambda_q: float = 0.1, lambda_b: float = 0.1,
                 use_contrastive: bool = True) -> None:
        super().__init__(n_bits=n_bits, seed=seed, epochs=epochs, batch_size=batch_size, lr=lr,
                         weight_decay=weight_decay, dropout=dropout, device=device)
        self.hidden = hidden
        self.margin = margin
        self.lambda_q = lambda_q
        self.lambda_b = lambda_b
        self.use_contrastive = use_contrastive

    def _head_params(self) -> dict[str, Any]:
        return {**super()._head_params(), "hidden": int(self.hidden)}

    def _loss_params(self) -> dict[str, Any]:
        return {"margin": self.margin, "lambda_q": float(self.lambda_q), "lambda_b": float(self.lambda_b),
                "use_contrastive": bool(self.use_contrastive)}

    def _pre_activation(self, X: np.ndarray) -> np.ndarray:
        e = np.maximum(self.standardize(X, _checked=True) @ self.enhance_weight_.T + self.enhance_bias_, 0)
        return e @ self.latent_weight_.T + self.latent_bias_
