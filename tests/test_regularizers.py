"""Orthogonality regularisers: zero (DSO: its floor m - n) on orthonormal factors, and
a gradient that points back to orthonormality when a factor is scaled away from it."""
import pytest
import torch

from model import regularizers as reg
from model.build import build



KINDS = ("dso", "so", "mc", "srip")
SHAPES = [(6, 6), (9, 4), (3, 8)]          # square, tall (U2: N x R2), wide (U1: R1 x C)


def orthonormal(m, n, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.linalg.qr(torch.randn(max(m, n), min(m, n), generator=g, dtype=torch.double)).Q
    return q if m >= n else q.T


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("kind", KINDS + ("none",))
def test_orthonormal_factor_sits_at_the_floor(kind, shape):
    q = orthonormal(*shape)
    m, n = max(shape), min(shape)
    expected = float(m - n) if kind == "dso" else 0.0
    assert reg.floor(q, kind) == expected
    assert reg.penalty(q, kind).item() == pytest.approx(expected, abs=1e-10)


def _exact_srip(u):
    u = u if u.shape[0] >= u.shape[1] else u.T
    return torch.linalg.matrix_norm(u.T @ u - torch.eye(u.shape[1], dtype=u.dtype), ord=2).item()


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("eps", [0.05, -0.05])
@pytest.mark.parametrize("noise", [0.0, 0.01])
def test_gradient_points_back_to_orthonormal(kind, shape, eps, noise):
    """U = (1 + eps) Q (+ a small perturbation). At noise 0 every singular value of U^T U - I
    is equal (up to rounding), the degenerate spectrum where an SVD's subgradient is
    arbitrary and differs between CPUs; SRIP's power-iteration estimate is smooth there."""
    q = orthonormal(*shape, seed=1)
    g = torch.Generator().manual_seed(2)
    u = ((1 + eps) * q + noise * torch.randn(q.shape, generator=g, dtype=torch.double)).requires_grad_(True)
    value = reg.penalty(u, kind)
    assert value.item() > reg.floor(q, kind)
    value.backward()
    assert torch.isfinite(u.grad).all()
    # the descent direction -grad has a component along -eps * Q (back towards Q) ...
    assert torch.sign(torch.sum(u.grad * q)).item() == (1 if eps > 0 else -1)
    # ... and a small step along it lowers the penalty by far more than rounding. MC at the
    # degenerate point is a max over equal diagonal entries (a tie): a step lowers one of
    # them, so the max can only stay (up to rounding), never rise.
    step = 1e-3 * u.grad
    with torch.no_grad():
        stepped = reg.penalty(u - step, kind)
    if kind == "mc" and not noise:
        assert stepped.item() <= value.item() + 1e-12
    else:
        assert stepped.item() < value.item() - 1e-9
    if kind == "srip":
        # the exact spectral norm never rises (at a degenerate spectrum a step can only lower
        # one of the equal singular values, so sigma_max stays: a max is not smooth there)
        assert _exact_srip((u - step).detach()) <= _exact_srip(u.detach()) + 1e-9
        if noise:
            assert _exact_srip((u - step).detach()) < _exact_srip(u.detach()) - 1e-9


def _sym(eigenvalues, seed=0):
    n = len(eigenvalues)
    v = torch.linalg.qr(torch.randn(n, n, generator=torch.Generator().manual_seed(seed), dtype=torch.double)).Q
    return v @ torch.diag(torch.tensor(eigenvalues, dtype=torch.double)) @ v.T


@pytest.mark.parametrize("eigenvalues", [
    [3.0, 1.0, 0.5, -0.2, 0.1],           # dominant positive eigenvalue
    [0.3, -2.0, 0.5, 0.9, -0.1, 0.0],     # dominant negative eigenvalue
    [1.5, 0.2],
])
def test_power_iteration_matches_the_exact_spectral_norm(eigenvalues):
    a = _sym(eigenvalues)
    exact = torch.linalg.matrix_norm(a, ord=2).item()
    assert exact == pytest.approx(max(abs(e) for e in eigenvalues), rel=1e-9)
    assert reg.spectral_norm_sym(a).item() == pytest.approx(exact, rel=1e-6)


@pytest.mark.parametrize("n", [3, 8, 38])
def test_power_iteration_is_a_converging_lower_bound(n):
    """On a random Gram matrix (close top eigenvalues): a lower bound at any step count,
    within a few percent after the default steps, exact to 1e-6 after many."""
    g = torch.Generator().manual_seed(n)
    u = 1.1 * torch.randn(2 * n, n, generator=g, dtype=torch.double) / (2 * n) ** 0.5
    a = u.T @ u - torch.eye(n, dtype=torch.double)
    exact = torch.linalg.matrix_norm(a, ord=2).item()
    estimates = [reg.spectral_norm_sym(a, k).item() for k in (0, 1, 3, reg.POWER_ITERATIONS, 400)]
    assert all(e <= exact * (1 + 1e-9) for e in estimates)
    assert estimates[3] >= 0.85 * exact
    assert estimates[-1] == pytest.approx(exact, rel=1e-6)
    assert reg.penalty(u, "srip").item() == pytest.approx(estimates[3], rel=1e-12)   # the penalty is this estimate


def test_srip_gradient_is_the_eigenvector_gradient():
    """Converged (non-degenerate top eigenvalue), the gradient is that of the exact norm;
    at a degenerate spectrum it is 2 sign(lambda) U v0 v0^T, repeatably."""
    g = torch.Generator().manual_seed(3)
    u = torch.randn(9, 4, generator=g, dtype=torch.double).requires_grad_(True)
    a = u.T @ u - torch.eye(4, dtype=torch.double)
    (reg.spectral_norm_sym(a, 400)).backward()
    got = u.grad.clone()
    u.grad = None
    torch.linalg.matrix_norm(u.T @ u - torch.eye(4, dtype=torch.double), ord=2).backward()
    assert torch.allclose(got, u.grad, rtol=1e-5, atol=1e-8)

    q = orthonormal(9, 4, seed=4)
    for eps in (0.05, -0.05):
        grads = []
        for _ in range(2):
            u = ((1 + eps) * q).requires_grad_(True)
            reg.penalty(u, "srip").backward()
            grads.append(u.grad)
        assert torch.allclose(grads[0], grads[1], rtol=0, atol=1e-12)          # repeatable
        v0 = torch.full((4, 1), 0.5, dtype=torch.double)
        expect = 2 * (1 if eps > 0 else -1) * (1 + eps) * q @ v0 @ v0.T
        assert torch.allclose(grads[0], expect, atol=1e-9)


def test_power_iteration_edge_cases():
    a = torch.zeros(3, 3, dtype=torch.double, requires_grad=True)
    value = reg.spectral_norm_sym(a)
    value.backward()
    assert value.item() == 0.0 and torch.isfinite(a.grad).all()
    b = torch.tensor([[1.0, -1.0], [-1.0, 1.0]], dtype=torch.double)   # the start vector is in its null space
    assert reg.spectral_norm_sym(b).item() == pytest.approx(2.0, rel=1e-9)


def test_so_and_dso_values_by_hand():
    u = 2 * torch.eye(3, dtype=torch.double)[:, :2]          # 3 x 2, U^T U = 4 I
    assert reg.penalty(u, "so").item() == pytest.approx(2 * 9)
    # U U^T - I = diag(3, 3, -1): 9 + 9 + 1
    assert reg.penalty(u, "dso").item() == pytest.approx(18 + 19)
    assert reg.penalty(u, "mc").item() == pytest.approx(3)
    assert reg.penalty(u, "srip").item() == pytest.approx(3)


def test_unknown_kind_raises():
    with pytest.raises(ValueError):
        reg.penalty(torch.eye(2), "frobenius")


def test_orthogonality_loss_over_a_model():
    b = build({"model": "resnet20", "flops_reduction": 2.0, "quant": False}, (3, 8, 8), 10)
    fs = reg.factors(b.model)
    assert len(fs) == 2 * len(b.ranks) and all(f.dim() == 2 for f in fs)
    loss = reg.orthogonality_loss(b.model, "dso", 1e-3)
    assert loss.item() == pytest.approx(1e-3 * sum(reg.penalty(f, "dso").item() for f in fs), rel=1e-5)
    loss.backward()
    assert b.model.blocks[0].conv1.conv.u1.weight.grad is not None
    assert reg.orthogonality_loss(b.model, "none", 1.0).item() == 0.0
    dense = build({"model": "resnet20", "dense": True, "quant": False}, (3, 8, 8), 10)
    assert reg.orthogonality_loss(dense.model, "dso", 1.0).item() == 0.0
