"""Turn per-demonstration shifts into one vector: pure tensor functions.

``shifts`` is a ``(k, D)`` matrix, one flattened latent shift (target minus
source, all layers concatenated) per demonstration.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch

from .errors import DemoError, OptionError

Aggregator = Callable[[torch.Tensor], torch.Tensor]


def mean_shift(shifts: torch.Tensor) -> torch.Tensor:
    """The average shift."""
    return shifts.mean(dim=0)


def pca_shift(shifts: torch.Tensor) -> torch.Tensor:
    """The paper's vector: first principal component of the centred shifts plus the mean.

    The component is unit-norm over all of ``D``; its sign (arbitrary in an SVD)
    is aligned with the mean shift so that the result points from source to target.
    """
    mean = shifts.mean(dim=0)
    if shifts.shape[0] < 2:
        warnings.warn(
            "one demonstration: PCA is undefined, using the mean shift", stacklevel=3
        )
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
    if torch.dot(component, mean) < 0:
        component = -component
    return component + mean


AGGREGATORS: dict[str, Aggregator] = {"pca": pca_shift, "mean": mean_shift}


def aggregator(method: str) -> Aggregator:
    try:
        return AGGREGATORS[method]
    except KeyError:
        raise OptionError(
            f"unknown method '{method}': choose one of {', '.join(AGGREGATORS)}"
        ) from None


def unit_rows(vector: torch.Tensor) -> torch.Tensor:
    """Each row scaled to unit norm (rows that are zero stay zero)."""
    norms = vector.norm(dim=-1, keepdim=True)
    if not bool((norms > 0).any()):
        raise DemoError(
            "every demonstration's source and target give the same activations: "
            "the sources and targets must differ"
        )
    return torch.where(norms > 0, vector / norms.clamp_min(1e-30), torch.zeros_like(vector))
