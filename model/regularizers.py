"""Orthogonality regularisers on the factor matrices U1 and U2 (Bansal et al. 2018; ELRT).

Each factor is viewed as a tall matrix U (m x n, m >= n; a wide one is transposed),
so "orthogonal" means orthonormal columns, U^T U = I_n:

* ``dso``  (ELRT): ||U^T U - I||_F^2 + ||U U^T - I||_F^2   (floor m - n when m > n)
* ``so``  : ||U^T U - I||_F^2
* ``mc``  : ||U^T U - I||_inf  (largest absolute entry, "mutual coherence")
* ``srip``: sigma_max(U^T U - I)  (spectral norm)
* ``none``: 0

The loss added to the task loss is ``weight * sum over all factors``.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .layers import FACTORIZED

KINDS = ("dso", "so", "mc", "srip", "none")


def _tall(u: torch.Tensor) -> torch.Tensor:
    return u if u.shape[0] >= u.shape[1] else u.T


def penalty(u: torch.Tensor, kind: str) -> torch.Tensor:
    """The (unweighted) orthogonality penalty of one factor matrix."""
    u = _tall(u)
    gram = u.T @ u - torch.eye(u.shape[1], dtype=u.dtype, device=u.device)
    if kind == "so":
        return gram.pow(2).sum()
    if kind == "dso":
        outer = u @ u.T - torch.eye(u.shape[0], dtype=u.dtype, device=u.device)
        return gram.pow(2).sum() + outer.pow(2).sum()
    if kind == "mc":
        return gram.abs().max()
    if kind == "srip":
        return torch.linalg.matrix_norm(gram, ord=2)
    if kind == "none":
        return u.new_zeros(())
    raise ValueError(f"unknown regulariser {kind!r}; choose one of: {', '.join(KINDS)}")


def floor(u: torch.Tensor, kind: str) -> float:
    """The smallest value ``penalty`` can take for a factor of this shape."""
    m, n = _tall(u).shape
    return float(m - n) if kind == "dso" else 0.0


def factors(model: nn.Module) -> list[torch.Tensor]:
    """All factor matrices (U1, U2 of every low-rank layer) of ``model``."""
    return [f for m in model.modules() if isinstance(m, FACTORIZED) for f in m.factors()]


def orthogonality_loss(model: nn.Module, kind: str, weight: float) -> torch.Tensor:
    """``weight * sum(penalty(U))`` over the model's factors (a 0-dim tensor)."""
    fs = factors(model)
    if kind == "none" or weight == 0 or not fs:
        ref = next(model.parameters())
        return ref.new_zeros(())
    return weight * torch.stack([penalty(f, kind) for f in fs]).sum()
