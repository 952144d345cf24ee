"""Low-rank layers trained from scratch (ELRT): Tucker-2 convolutions and factorized matrices.

``Tucker2Conv2d`` replaces a dense ``N x C x k x k`` convolution by three convolutions::

    U1: 1x1, C -> R1   (input factor)       q1: requantizer (signed, act_bits)
    G : kxk, R1 -> R2  (core; stride, padding, dilation of the dense conv)
    q2: requantizer    U2: 1x1, R2 -> N (output factor)

``LowRankConv2d`` (1x1 convolutions) and ``LowRankLinear`` are the matrix analogue
``W = U2 @ U1`` with one requantizer between. All factors start Xavier-uniform
(the paper's initialisation). The module's output is U2's accumulator; the network
puts BatchNorm (folded before export) and the output requantizer after it.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from . import quant
from .quant import FLOAT, QuantConfig


def _xavier(*modules: nn.Module) -> None:
    for m in modules:
        nn.init.xavier_uniform_(m.weight)
        if m.bias is not None:
            nn.init.zeros_(m.bias)


def _as_pair(ranks) -> tuple[int, int]:
    r1, r2 = (ranks, ranks) if isinstance(ranks, int) else ranks
    return int(r1), int(r2)


class FactorizedMixin:
    """Shared API: ``factors()`` for the orthogonality regulariser, ``stages()`` for export."""

    def factors(self) -> list[torch.Tensor]:
        """The factor matrices U1 (R1 x C) and U2 (N x R2), as 2-D views of the float weights."""
        return [self.u1.weight.flatten(1), self.u2.weight.flatten(1)]

    @property
    def last_stage(self) -> nn.Module:
        """The stage BatchNorm is folded into."""
        return self.u2


class Tucker2Conv2d(FactorizedMixin, nn.Module):
    """Tucker-2 convolution U1 -> G -> U2, a drop-in replacement for ``nn.Conv2d``.

    Input (B, C, H, W); output (B, N, H_out, W_out) with the dense conv's geometry.
    ``ranks`` is ``(R1, R2)`` with ``1 <= R1 <= C`` and ``1 <= R2 <= N``.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, ranks, stride: int = 1,
                 padding: int = 0, dilation: int = 1, bias: bool = False, qc: QuantConfig = FLOAT):
        super().__init__()
        r1, r2 = _as_pair(ranks)
        if not (1 <= r1 <= in_channels and 1 <= r2 <= out_channels):
            raise ValueError(f"Tucker-2 ranks ({r1}, {r2}) must lie in [1, {in_channels}] x [1, {out_channels}] "
                             f"for a {in_channels} -> {out_channels} convolution")
        self.in_channels, self.out_channels, self.ranks = in_channels, out_channels, (r1, r2)
        self.kernel_size, self.stride, self.padding, self.dilation = kernel_size, stride, padding, dilation
        self.u1 = quant.conv2d(qc, in_channels, r1, 1)
        self.q1 = quant.act(qc, signed=True)
        self.g = quant.conv2d(qc, r1, r2, kernel_size, stride, padding, dilation)
        self.q2 = quant.act(qc, signed=True)
        self.u2 = quant.conv2d(qc, r2, out_channels, 1, bias=bias)
        _xavier(self.u1, self.g, self.u2)

    def forward(self, x):
        return self.u2(self.q2(self.g(self.q1(self.u1(x)))))

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, ranks, qc: QuantConfig = FLOAT, decompose: bool = False):
        """A Tucker-2 layer with ``conv``'s geometry; ``decompose=True`` initialises the
        factors from a truncated HOSVD of ``conv.weight`` instead of Xavier (from-scratch) init."""
        if conv.groups != 1 or conv.kernel_size[0] != conv.kernel_size[1]:
            raise ValueError("Tucker2Conv2d.from_conv needs an ungrouped conv with a square kernel")
        layer = cls(conv.in_channels, conv.out_channels, conv.kernel_size[0], ranks, conv.stride[0],
                    conv.padding[0], conv.dilation[0], conv.bias is not None, qc)
        if decompose:
            u1, core, u2 = hosvd(conv.weight.detach(), *layer.ranks)
            with torch.no_grad():
                layer.u1.weight.copy_(u1[:, :, None, None])
                layer.g.weight.copy_(core)
                layer.u2.weight.copy_(u2[:, :, None, None])
                if conv.bias is not None:
                    layer.u2.bias.copy_(conv.bias)
        return layer

    def reconstruct_kernel(self) -> torch.Tensor:
        """The equivalent dense kernel (N, C, k, k) = U2 x G x U1 (float weights)."""
        u1, u2 = self.u1.weight.flatten(1), self.u2.weight.flatten(1)
        return torch.einsum("nb,baij,ac->ncij", u2, self.g.weight, u1)


def hosvd(weight: torch.Tensor, r1: int, r2: int):
    """Truncated Tucker-2 HOSVD of a (N, C, k, k) kernel -> U1 (R1, C), G (R2, R1, k, k), U2 (N, R2)."""
    n, c = weight.shape[:2]
    u_out = torch.linalg.svd(weight.reshape(n, -1), full_matrices=False)[0][:, :r2]        # N x R2
    u_in = torch.linalg.svd(weight.transpose(0, 1).reshape(c, -1), full_matrices=False)[0][:, :r1]  # C x R1
    core = torch.einsum("ncij,nb,ca->baij", weight, u_out, u_in)
    return u_in.T.contiguous(), core, u_out


class LowRankConv2d(FactorizedMixin, nn.Module):
    """Factorized 1x1 convolution: U1 (1x1, C -> R, carries the stride) then U2 (1x1, R -> N)."""

    def __init__(self, in_channels: int, out_channels: int, rank: int, stride: int = 1, bias: bool = False,
                 qc: QuantConfig = FLOAT):
        super().__init__()
        if not 1 <= rank <= min(in_channels, out_channels):
            raise ValueError(f"rank {rank} must lie in [1, {min(in_channels, out_channels)}] for a "
                             f"{in_channels} -> {out_channels} 1x1 convolution")
        self.in_channels, self.out_channels, self.ranks = in_channels, out_channels, (rank,)
        self.kernel_size, self.stride, self.padding = 1, stride, 0
        self.u1 = quant.conv2d(qc, in_channels, rank, 1, stride)
        self.q1 = quant.act(qc, signed=True)
        self.u2 = quant.conv2d(qc, rank, out_channels, 1, bias=bias)
        _xavier(self.u1, self.u2)

    def forward(self, x):
        return self.u2(self.q1(self.u1(x)))

    def reconstruct_kernel(self) -> torch.Tensor:
        """The equivalent dense 1x1 kernel (N, C, 1, 1)."""
        return (self.u2.weight.flatten(1) @ self.u1.weight.flatten(1))[:, :, None, None]


class LowRankLinear(FactorizedMixin, nn.Module):
    """Factorized linear layer ``y = U2 (U1 x)`` with U1: C -> R, U2: R -> N (R <= min(C, N))."""

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool = True,
                 qc: QuantConfig = FLOAT):
        super().__init__()
        if not 1 <= rank <= min(in_features, out_features):
            raise ValueError(f"rank {rank} must lie in [1, {min(in_features, out_features)}] for a "
                             f"{in_features} -> {out_features} linear layer")
        self.in_features, self.out_features, self.ranks = in_features, out_features, (rank,)
        self.u1 = quant.linear(qc, in_features, rank, bias=False)
        self.q1 = quant.act(qc, signed=True)
        self.u2 = quant.linear(qc, rank, out_features, bias=bias)
        _xavier(self.u1, self.u2)

    def forward(self, x):
        return self.u2(self.q1(self.u1(x)))

    @classmethod
    def from_linear(cls, layer: nn.Linear, rank: int, qc: QuantConfig = FLOAT, decompose: bool = False):
        """Same geometry as ``layer``; ``decompose=True`` initialises from its truncated SVD."""
        out = cls(layer.in_features, layer.out_features, rank, layer.bias is not None, qc)
        if decompose:
            u, s, vh = torch.linalg.svd(layer.weight.detach(), full_matrices=False)
            root = s[:rank].sqrt()
            with torch.no_grad():
                out.u1.weight.copy_(root[:, None] * vh[:rank])
                out.u2.weight.copy_(u[:, :rank] * root[None, :])
                if layer.bias is not None:
                    out.u2.bias.copy_(layer.bias)
        return out

    def reconstruct_weight(self) -> torch.Tensor:
        """The equivalent dense weight (N, C)."""
        return self.u2.weight @ self.u1.weight


FACTORIZED = (Tucker2Conv2d, LowRankConv2d, LowRankLinear)
