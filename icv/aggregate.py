"""Turn per-demonstration shifts into one vector: pure tensor functions.

``shifts`` is a ``(k, D)`` matrix, one flattened latent shift (target minus
source, all layers concatenated) per demonstration.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable

import torch

from .errors import DemoError, OptionError

Aggregator = Callable[[torch.Tensor], torch.Tensor]


def mean_shift(shifts: torch.Tensor) -> torch.Tensor:
    """The average shift."""
    return shifts.mean(dim=0)


# How the principal component's sign (arbitrary in an SVD) is fixed.
#   "mean": the component points the way of the mean shift (this library's default);
#   "svd_flip": the reference code's rule (scikit-learn's svd_flip on the left singular
#   vectors): the demonstration with the largest absolute score gets a positive score.
PCA_SIGNS = ("mean", "svd_flip")


def pca_shift(shifts: torch.Tensor, sign: str = "mean") -> torch.Tensor:
    """The paper's vector: first principal component of the centred shifts plus the mean.

    The component is unit-norm over all of ``D``; ``sign`` fixes its sign (see
    :data:`PCA_SIGNS`).  With the mean shift's norm in the hundreds on real models,
    the unit component hardly moves the result: "PCA + mean" is almost the mean.
    """
    if sign not in PCA_SIGNS:
        raise OptionError(f"unknown PCA sign rule '{sign}': choose one of {', '.join(PCA_SIGNS)}")
    mean = shifts.mean(dim=0)
    if shifts.shape[0] < 2:
        warnings.warn("one demonstration: PCA is undefined, using the mean shift", stacklevel=3)
        return mean
    centred = shifts - mean
    # The top right-singular vector of the centred matrix is the first principal
    # component.  Take it from the smaller of the k x k Gram matrix (few demos, wide
    # models) and the D x D covariance (thousands of demos, narrow models): the
    # eigendecomposition is cubic in that size.
    if centred.shape[0] <= centred.shape[1]:
        eigenvalues, eigenvectors = torch.linalg.eigh((centred @ centred.T).double())
        component = centred.T @ eigenvectors[:, -1].to(shifts.dtype)
    else:
        eigenvalues, eigenvectors = torch.linalg.eigh((centred.T @ centred).double())
        component = eigenvectors[:, -1].to(shifts.dtype)
    norm = component.norm()
    if not bool(norm > 0) or eigenvalues[-1] <= 0:
        return mean  # all shifts identical: the mean is the whole story
    component = component / norm
    if _flip(component, centred, mean, sign):
        component = -component
    return component + mean


def _flip(component: torch.Tensor, centred: torch.Tensor, mean: torch.Tensor, sign: str) -> bool:
    if sign == "mean":
        return bool(torch.dot(component, mean) < 0)
    # The scores are the left singular vector times its singular value: same signs.
    scores = (centred.double() @ component.double()).abs()
    # Exact ties (two demonstrations: scores +s and -s) are decided by rounding in the
    # reference; here the first demonstration among near-equal maxima wins, every time.
    top = int(torch.nonzero(scores >= scores.max() * (1 - 1e-9))[0])
    return bool(centred[top].double() @ component.double() < 0)


AGGREGATORS: dict[str, Aggregator] = {"pca": pca_shift, "mean": mean_shift}


def aggregator(method: str, *, pca_sign: str = "mean") -> Aggregator:
    """The aggregation ``method`` (a key of :data:`AGGREGATORS`); ``pca_sign`` applies to ``"pca"``."""
    if method not in AGGREGATORS:
        raise OptionError(f"unknown method '{method}': choose one of {', '.join(AGGREGATORS)}")
    if pca_sign not in PCA_SIGNS:
        raise OptionError(f"unknown PCA sign rule '{pca_sign}': choose one of {', '.join(PCA_SIGNS)}")
    if method == "pca" and pca_sign != "mean":
        return functools.partial(pca_shift, sign=pca_sign)
    return AGGREGATORS[method]


def unit_rows(vector: torch.Tensor) -> torch.Tensor:
    """Each row scaled to unit norm (rows that are zero stay zero)."""
    norms = vector.norm(dim=-1, keepdim=True)
    if not bool((norms > 0).any()):
        raise DemoError(
            "every demonstration's source and target give the same activations: "
            "the sources and targets must differ"
        )
    return torch.where(norms > 0, vector / norms.clamp_min(1e-30), torch.zeros_like(vector))
