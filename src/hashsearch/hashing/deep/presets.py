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
from hashsearch.hashing.deep.unsupervised import UnsupervisedDeepHasher


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
    hasher_class : type
        `DeepHasher`, or a subclass of it such as `UnsupervisedDeepHasher` (trains without labels).
    training : dict
        The method's own defaults of training settings (`DeepHasher.training_params`), e.g.
        ``{"batch_size": 256}``; the others keep `DeepHasher`'s.
    """

    #: Whether the method needs labels (its hasher class's `supervised`; set per preset).
    supervised: bool = True
    feature_backbones: ClassVar[tuple[str | None, ...]] = (None,)

    def __init__(
        self,
        name: str,
        head: str,
        loss: str,
        doc: str,
        head_params: dict[str, Any] | None = None,
        loss_params: dict[str, Any] | None = None,
        hasher_class: type[DeepHasher] = DeepHasher,
        training: dict[str, Any] | None = None,
    ) -> None:
        self.name, self.head, self.loss = name, head, loss
        self.hasher_class = hasher_class
        self.supervised = hasher_class.supervised
        self.training_defaults = dict(training or {})
        unknown = sorted(set(self.training_defaults) - set(DeepHasher.training_params))
        if unknown:
            raise TypeError(
                f"preset {name!r}: training defaults {unknown} are not training settings {DeepHasher.training_params}"
            )
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
                *(
                    base[k].replace(
                        kind=inspect.Parameter.KEYWORD_ONLY, default=self.training_defaults.get(k, base[k].default)
                    )
                    for k in DeepHasher.training_params
                ),
                *own,
            ]
        )

    def __call__(self, n_bits: int = 48, **params: Any) -> DeepHasher:
        training = {**self.training_defaults, **{k: params.pop(k) for k in DeepHasher.training_params if k in params}}
        unknown = sorted(set(params) - set(self.head_defaults) - set(self.loss_defaults))
        if unknown:
            raise TypeError(
                f"{self.name}() got unexpected parameters {unknown}; it takes n_bits, "
                f"{', '.join(DeepHasher.training_params)}{''.join(', ' + k for k in {**self.head_defaults, **self.loss_defaults})}"
            )
        hasher = self.hasher_class(
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


def register_preset(name: str, head: str, loss: str, doc: str, **defaults: Any) -> Preset:
    """Register a deep hashing method under `name` (`defaults`: head_params=, loss_params=, hasher_class=)."""
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


# -- unsupervised: trained without labels (`UnsupervisedDeepHasher`) ------------------------------
#
# BiHalf's, GreedyHash's and bihalf-spectral's epochs default to None: at least 2,000 optimiser steps
# and 30 epochs (`UnsupervisedDeepHasher.MIN_STEPS`), so that a small collection is trained as long as
# a large one. SSDH keeps 30 epochs: longer training did not help it on the validation split
# (`benchmarks/unsupervised.py --validation`), nor did it need the steps.

BiHalf = register_preset(
    "bihalf",
    "latent-tanh",
    "bihalf",
    """BiHalf (Li & van Gemert, "Deep unsupervised image hashing by maximizing bit entropy", AAAI 2021),
    without labels: a hash layer on the features whose batch codes come from the bi-half layer
    (each bit +1 for the upper half of the batch, -1 for the lower: balanced bits), trained so
    that the codes' cosine similarities equal the centred features'. `gamma` weighs the layer's
    pull of z toward its code in the backward pass (paper: 6).""",
    loss_params={"gamma": 6.0},
    hasher_class=UnsupervisedDeepHasher,
    training={"batch_size": 256, "epochs": None},
)

GreedyHashUnsup = register_preset(
    "greedyhash-unsup",
    "latent-tanh",
    "greedyhash-unsup",
    """GreedyHash, unsupervised (Su, Zhang, Han & Tian, "Greedy Hash: towards fast optimization for
    accurate hash coding in CNN", NeurIPS 2018), without labels: sign of the hash layer forward,
    its gradient passed straight through backward; the codes' cosine similarities are trained to
    equal the centred features', plus `alpha` times the cubic penalty pulling z toward +-1.""",
    loss_params={"alpha": 0.1},
    hasher_class=UnsupervisedDeepHasher,
    training={"epochs": None},
)

SSDH = register_preset(
    "ssdh",
    "latent-tanh",
    "ssdh",
    """SSDH (Yang, Deng, Liu, Liu & Tao, "Semantic structure-based unsupervised deep hashing", IJCAI 2018),
    without labels: the training features' pairwise cosine distances are read as two half
    Gaussians around their mode m (spreads s_l, s_r); pairs nearer than m - `alpha` s_l are
    similar, farther than m + `beta` s_r dissimilar, the rest left out; the tanh codes' scaled
    inner products are fitted to that +-1 structure (squared error).""",
    loss_params={"alpha": 2.0, "beta": 0.0},
    hasher_class=UnsupervisedDeepHasher,
)

BiHalfSpectral = register_preset(
    "bihalf-spectral",
    "latent-tanh",
    "bihalf-spectral",
    """BiHalf on spectral-cluster pseudo-labels, without labels (ours, from Li & van Gemert, AAAI 2021
    and Hu et al., ACM MM 2017): the training features are grouped once by spectral clustering of
    their cosine `n_neighbors`-NN graph into `n_clusters` clusters; BiHalf's layer and loss then
    train codes whose cosine similarity is 1 within a cluster and 0 across. `n_clusters` is a
    guess of how many kinds of image the collection holds (10 for CIFAR-10's ten classes).""",
    loss_params={"gamma": 3.0, "n_clusters": 10, "n_neighbors": 5},
    hasher_class=UnsupervisedDeepHasher,
    training={"batch_size": 256, "epochs": None},
)
