"""Orthogonality regularisers on the factor matrices U1 and U2 (Bansal et al. 2018; ELRT).

Each factor is viewed as a tall matrix U (m x n, m >= n; a wide one is transposed),
so "orthogonal" means orthonormal columns, U^T U = I_n:

* ``dso``  (ELRT): ||U^T U - I||_F^2 + ||U U^T - I||_F^2   (floor m - n when m > n)
* ``so``  : ||U^T U - I||_F^2
* ``mc``  : ||U^T U - I||_inf  (largest absolute entry, "mutual coherence")
* ``srip``: sigma_max(U^T U - I)  (spectral norm, estimated by power iteration)
* ``none``: 0

The loss added to the task loss is ``weight * sum over all factors``.

SRIP's spectral norm is computed as Bansal et al. (NeurIPS 2018) do, by power iteration
rather than an SVD. ``A = U^T U - I`` is symmetric, so ``POWER_ITERATIONS`` steps of
``v <- A v / ||A v||`` from the fixed start vector ``v0 = (1, ..., 1) / sqrt(n)`` (no
randomness: the value is repeatable) approach an eigenvector of the eigenvalue of largest
magnitude, and the penalty is ``sigma = ||A v||`` with ``v`` detached (no gradient through
the iteration). For a unit ``v``, ``||A v|| <= sigma_max(A)``: the estimate is a **lower
bound** that converges to ``sigma_max`` (relative error of order
``(lambda_2 / lambda_1)^(2k)`` after ``k`` steps); it is exact when ``v0`` is an
eigenvector of the top eigenvalue, e.g. at ``U = c Q`` where every singular value of ``A``
is equal. (Should ``A v0`` be 0 for a non-zero ``A``, the iteration starts from the unit
vector of ``A``'s largest column instead.) Its gradient
``d||A v|| = (A v)^T dA v / ||A v||`` is smooth and well defined where singular values
repeat, where the SVD's is not (its singular vectors, and so its subgradient, are then
arbitrary and differ between CPUs). It costs ``k`` matrix-vector products on the
``n x n`` Gram matrix instead of an SVD.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .layers import FACTORIZED

KINDS = ("dso", "so", "mc", "srip", "none")
POWER_ITERATIONS = 10        # SRIP: power-iteration steps per evaluation


def _tall(u: torch.Tensor) -> torch.Tensor:
    return u if u.shape[0] >= u.shape[1] else u.T


def spectral_norm_sym(a: torch.Tensor, iterations: int = POWER_ITERATIONS) -> torch.Tensor:
    """Power-iteration estimate of ``sigma_max`` of the symmetric matrix ``a`` (a lower bound).

    ``v`` starts at ``ones / sqrt(n)`` and takes ``iterations`` steps ``v <- a v / ||a v||``
    without gradient; the result ``||a v||`` carries the gradient through ``a`` only."""
    n = a.shape[0]
    with torch.no_grad():
        ad = a.detach()
        v = torch.full((n,), n ** -0.5, dtype=a.dtype, device=a.device)
        if not torch.linalg.vector_norm(ad @ v) > 0:
            # v0 in the null space of a non-zero a (or a = 0): start from a's largest column instead
            v = torch.zeros_like(v)
            v[int(torch.linalg.vector_norm(ad, dim=0).argmax())] = 1.0
        for _ in range(iterations):
            w = ad @ v
            norm = torch.linalg.vector_norm(w)
            if not norm > 0:             # a = 0 (or non-finite): nothing to iterate
                break
            v = w / norm
    return torch.linalg.vector_norm(a @ v)


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
        return spectral_norm_sym(gram)
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
