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


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("eps", [0.05, -0.05])
def test_gradient_points_back_to_orthonormal(kind, shape, eps):
    q = orthonormal(*shape, seed=1)
    u = ((1 + eps) * q).requires_grad_(True)
    value = reg.penalty(u, kind)
    assert value.item() > reg.floor(q, kind)
    value.backward()
    # the descent direction -grad has a component along -eps * Q (back towards Q) ...
    assert torch.sign(torch.sum(u.grad * q)).item() == (1 if eps > 0 else -1)
    # ... and a small step along it lowers the penalty
    with torch.no_grad():
        stepped = reg.penalty(u - 1e-3 * u.grad, kind)
    assert stepped.item() < value.item()


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
