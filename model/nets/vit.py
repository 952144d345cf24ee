"""A small Vision Transformer (Dosovitskiy et al. 2021) with factorizable linear layers.

    tokens = patch_embed(patches(x)) + pos            patch_embed: linear, C*p*p -> D
    repeat depth times (pre-norm):
        t = t + proj(attention(qkv(LN(t))))          qkv: D -> 3D, proj: D -> D
        t = t + fc2(GELU(fc1(LN(t))))                fc1: D -> mD, fc2: mD -> D
    logits = fc(LN(mean over tokens of t))

Every linear goes through ``LayerFactory.linear`` (``LowRankLinear`` when ranked); the
patch embedding (the first layer) and ``fc`` stay dense unless ``factorize_first`` /
``factorize_classifier``. The attention products Q K^T and A V have no weights; the
``Attention`` module declares their MACs through ``extra_macs`` for the FLOPs table.

Quantization: each linear is a Brevitas quant linear (power-of-two weights, Int32
bias) fed by a signed power-of-two requantizer, so the linears are QAT-trained like
the CNNs. LayerNorm, softmax, GELU and the attention matmuls stay float: this model
is *not* integer-exportable (the integer contract covers the CNNs).

The position embedding is a learned row + column embedding sliced to the patch
grid, so any input with H, W <= ``max_grid`` * patch works without knowing the input
size at construction. Names: ``vit_tiny`` (patch 4, for 32x32 inputs: 64 tokens) and
``vit_tiny_p2`` (patch 2, for 8x8 digits: 16 tokens); D = 128, 6 blocks, 4 heads, m = 2.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import quant
from ..blocks import LayerFactory

CONFIGS = {"vit_tiny": dict(patch=4), "vit_tiny_p2": dict(patch=2)}


class QLinear(nn.Module):
    """``linear(requant(x))``: the quant linears need a quantized input (Int32 bias)."""

    def __init__(self, f: LayerFactory, name: str, cin: int, cout: int, factorizable: bool = True):
        super().__init__()
        self.quant = quant.act(f.qc, signed=True)
        self.linear = f.linear(name, cin, cout, factorizable=factorizable)

    def forward(self, x):
        return quant.value(self.linear(self.quant(x)))


class Attention(nn.Module):
    """Multi-head self-attention; input and output (B, T, D)."""

    def __init__(self, f: LayerFactory, name: str, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"embedding dim {dim} is not divisible by {heads} heads")
        self.dim, self.heads = dim, heads
        self.qkv = QLinear(f, f"{name}.qkv", dim, 3 * dim)
        self.proj = QLinear(f, f"{name}.proj", dim, dim)

    def extra_macs(self, tokens: int) -> int:
        """Q K^T (T x T x D) plus A V (T x T x D) MACs per image; softmax not counted."""
        return 2 * tokens * tokens * self.dim

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(x).reshape(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v)
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


class Block(nn.Module):
    def __init__(self, f: LayerFactory, name: str, dim: int, heads: int, mlp_ratio: int):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = Attention(f, f"{name}.attn", dim, heads)
        self.fc1 = QLinear(f, f"{name}.mlp.fc1", dim, mlp_ratio * dim)
        self.fc2 = QLinear(f, f"{name}.mlp.fc2", mlp_ratio * dim, dim)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class ViT(nn.Module):
    """Input (B, in_channels, H, W), H and W multiples of ``patch`` -> logits (B, classes)."""

    def __init__(self, f: LayerFactory, num_classes: int = 10, in_channels: int = 3, patch: int = 4,
                 dim: int = 128, depth: int = 6, heads: int = 4, mlp_ratio: int = 2, max_grid: int = 64,
                 factorize_first: bool = False, factorize_classifier: bool = False,
                 factorize_shortcut: bool = False):
        super().__init__()
        del factorize_shortcut  # no conv shortcuts in a transformer
        self.patch = patch
        self.input_quant = quant.input_quant(f.qc)
        self.patch_embed = f.linear("patch_embed", in_channels * patch * patch, dim,
                                    factorizable=factorize_first)
        self.pos_row = nn.Parameter(torch.zeros(max_grid, 1, dim))
        self.pos_col = nn.Parameter(torch.zeros(1, max_grid, dim))
        nn.init.trunc_normal_(self.pos_row, std=0.02)
        nn.init.trunc_normal_(self.pos_col, std=0.02)
        self.blocks = nn.Sequential(*[Block(f, f"blocks.{i}", dim, heads, mlp_ratio) for i in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.fc = QLinear(f, "fc", dim, num_classes, factorizable=factorize_classifier)

    def forward(self, x):
        b, c, h, w = x.shape
        p = self.patch
        if h % p or w % p:
            raise ValueError(f"input {h}x{w} is not a multiple of the patch size {p}")
        # (B, C, H, W) -> (B, T, C*p*p) patches in row-major order; the per-tensor input
        # quantizer is applied to the patches (the same values, rearranged).
        x = x.unfold(2, p, p).unfold(3, p, p).permute(0, 2, 3, 1, 4, 5).reshape(b, -1, c * p * p)
        x = quant.value(self.patch_embed(self.input_quant(x)))
        pos = (self.pos_row[: h // p] + self.pos_col[:, : w // p]).reshape(1, -1, x.shape[-1])
        x = self.blocks(x + pos)
        return self.fc(self.norm(x).mean(dim=1))


def build(name: str, f: LayerFactory, num_classes: int, in_channels: int, **options) -> ViT:
    return ViT(f, num_classes, in_channels, **{**CONFIGS[name], **options})
