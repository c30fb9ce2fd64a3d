"""The published deep hashing methods, as registered presets of the one `DeepHasher`.

A preset names a head, a loss, and the parameters of either that the method exposes (with the
paper's defaults); ``create_hasher("dpsh", n_bits=48, eta=0.1, epochs=30)`` builds
``DeepHasher(n_bits=48, head="latent-tanh", loss="dpsh", loss_params={"eta": 0.1}, epochs=30)``
that reports itself, saves and loads as "dpsh". A new method is one more `register_preset`
line (or, unregistered, a `DeepHasher` with any registered head and loss).
"""

from __future__ import annotations

import inspect
from typing import Any, ClassVar

from hashsearch.hashing.base import Hasher, register_hasher
from hashsearch.hashing.deep.base import DeepHasher


class Preset:
    """A deep hashing method: `DeepHasher` with a fixed head and loss and named parameters.

    Calling it builds the hasher: ``preset(n_bits=48, **params)``, where params are the training
    settings (`DeepHasher.training_params`) and the method's own (`head_params`, `loss_params`).

    Parameters
    ----------
    name : str
        The registered name.
    head, loss : str
        Registered head and loss names.
    doc : str
        The method's description with its paper (shown by `help` and the docs).
    head_params, loss_params : dict
        The method's own parameters and their defaults, passed to the head or the loss.
    """

    supervised: ClassVar[bool] = True
    feature_backbones: ClassVar[tuple[str | None, ...]] = (None,)

    def __init__(
        self,
        name: str,
        head: str,
        loss: str,
        doc: str,
        head_params: dict[str, Any] | None = None,
        loss_params: dict[str, Any] | None = None,
    ) -> None:
        self.name, self.head, self.loss = name, head, loss
        self.head_defaults = dict(head_params or {})
        self.loss_defaults = dict(loss_params or {})
        self.__doc__ = doc
        base = inspect.signature(DeepHasher.__init__).parameters
        own = [
            inspect.Parameter(k, inspect.Parameter.KEYWORD_ONLY, default=v)
            for k, v in {**self.head_defaults, **self.loss_defaults}.items()
        ]
        self.__signature__ = inspect.Signature(
            [
                base["n_bits"],
                *(base[k].replace(kind=inspect.Parameter.KEYWORD_ONLY) for k in DeepHasher.training_params),
                *own,
            ]
        )

    def __call__(self, n_bits: int = 48, **params: Any) -> DeepHasher:
        training = {k: params.pop(k) for k in DeepHasher.training_params if k in params}
        unknown = sorted(set(params) - set(self.head_defaults) - set(self.loss_defaults))
        if unknown:
            raise TypeError(
                f"{self.name}() got unexpected parameters {unknown}; it takes n_bits, "
                f"{', '.join(DeepHasher.training_params)}{''.join(', ' + k for k in {**self.head_defaults, **self.loss_defaults})}"
            )
        hasher = DeepHasher(
            n_bits,
            head=self.head,
            loss=self.loss,
            head_params={k: params.get(k, v) for k, v in self.head_defaults.items()},
            loss_params={k: params.get(k, v) for k, v in self.loss_defaults.items()},
            **training,
        )
        hasher.name = self.name
        hasher._preset = self
        return hasher

    def params_of(self, hasher: DeepHasher) -> dict[str, Any]:
        """The parameters that rebuild `hasher` through this preset (what `get_params` reports)."""
        params = Hasher.get_params(hasher)
        return {
            "n_bits": params["n_bits"],
            **{k: params[k] for k in DeepHasher.training_params},
            **(params["head_params"] or {}),
            **(params["loss_params"] or {}),
        }

    def __repr__(self) -> str:
        return f"Preset({self.name!r}: head {self.head!r}, loss {self.loss!r})"


def register_preset(name: str, head: str, loss: str, doc: str, **defaults: dict[str, Any]) -> Preset:
    """Register a deep hashing method under `name` (`defaults`: head_params=, loss_params=)."""
    preset = Preset(name, head, loss, doc, **defaults)
    register_hasher(name)(preset)
    return preset


DLBHC = register_preset(
    "dlbhc",
    "latent-sigmoid",
    "cross-entropy",
    """DLBHC (Lin, Yang, Hsiao & Chen, "Deep learning of binary hash codes for fast image retrieval",
    CVPR-W 2015): features -> a latent layer H of `n_bits` sigmoid units -> a classification layer,
    trained with softmax cross-entropy on class labels; bit = H >= 0.5. In head mode the backbone
    is frozen and only H and the classifier learn; `finetune` trains the CNN too, as the paper
    does. The classifier is kept, so the hasher also classifies (`predict`).""",
)

DPSH = register_preset(
    "dpsh",
    "latent-tanh",
    "dpsh",
    """DPSH (Li, Wang & Kang, "Feature learning based deep supervised hashing with pairwise labels",
    IJCAI 2016): pairwise label likelihood from inner products of the relaxed codes, plus `eta`
    times the quantization term.""",
    loss_params={"eta": 0.1},
)

DSH = register_preset(
    "dsh",
    "latent-tanh",
    "dsh",
    """DSH (Liu, Wang, Shan & Chen, "Deep supervised hashing for fast image retrieval", CVPR 2016):
    contrastive loss with margin (default 2 * n_bits) on relaxed codes, plus `alpha` times the L1
    pull toward +-1. Deep *supervised* hashing; density-sensitive hashing is 'dsh-density'.""",
    loss_params={"margin": None, "alpha": 0.01},
)

HashNet = register_preset(
    "hashnet",
    "latent-tanh",
    "hashnet",
    """HashNet (Cao, Long, Wang & Yu, "HashNet: deep learning to hash by continuation", ICCV 2017):
    weighted pairwise cross-entropy on ``alpha * u_i . u_j`` (default alpha 10 / n_bits); no
    continuation (beta = 1).""",
    loss_params={"alpha": None},
)

CSQ = register_preset(
    "csq",
    "latent-tanh",
    "csq",
    """CSQ (Yuan et al., "Central similarity quantization for efficient image and video retrieval",
    CVPR 2020): each class gets a hash centre (Hadamard rows, or seeded random codes); the codes
    are pulled to their class's centre by binary cross-entropy, plus `lam` times quantization.""",
    loss_params={"lam": 1e-4},
)

DFEH = register_preset(
    "dfeh",
    "feature-enhance",
    "dfeh",
    """DFEH (Zhao & Liu, "Leveraging deep features enhance and semantic-preserving hashing for image
    retrieval", Electronics 11(15):2391, 2022): a feature-enhancement layer (Linear + ReLU, width
    `hidden`) before the tanh hash layer; loss = contrastive + `lambda_q` * quantization +
    `lambda_b` * bit balance. The ablations: `lambda_q` = `lambda_b` in {0, 0.1, 0.01, 0.001}, and
    each term removed (`lambda_q=0`, `lambda_b=0`, `use_contrastive=False`). The paper's text lacks
    the body of its section 3, so the exact layer sizes are ours.""",
    head_params={"hidden": 512},
    loss_params={"margin": None, "lambda_q": 0.1, "lambda_b": 0.1, "use_contrastive": True},
)
