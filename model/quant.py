"""Quantizer choices: Brevitas power-of-two (fixed-point) quantizers, or plain float modules.

Every scale is a power of two, so each rescale in the deployed graph is an arithmetic
shift and the QAT model's arithmetic is exactly the integer contract (design section 3):

* weights: ``Int8WeightPerTensorFixedPoint`` at ``weight_bits`` (narrow range, signed);
* biases: ``Int32Bias`` (scale = input scale x weight scale, i.e. accumulator units);
* activations: ``Int8ActPerTensorFixedPoint`` (signed) / ``Uint8ActPerTensorFixedPoint``
  (unsigned, after ReLU) at ``act_bits``, learned power-of-two scale;
* rounding: ``torch.round`` (round half to even) then clamp.

``impl`` chooses how they run: ``"brevitas"`` uses the quantizers above as Brevitas ships
them; ``"fused"`` uses ``model/fastquant.py``'s subclasses of the same quantizers, whose
integer quantization, training-mode scale and activation percentile are one autograd
Function each: the same values, gradients, state_dict and export, with fewer passes over
each tensor and far fewer operations per call (docs/method.md section 6.3).

With ``QuantConfig(enabled=False)`` the same factories return ``nn.Conv2d``,
``nn.Linear``, ``nn.Identity`` and ``nn.ReLU``, so the network code is written once.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch.nn as nn

MIN_BITS, MAX_BITS = 2, 8
IMPLS = ("fused", "brevitas")


@dataclass(frozen=True)
class QuantConfig:
    """Bit widths of a quantized network. ``enabled=False`` builds a float network."""

    enabled: bool = True
    weight_bits: int = 8
    act_bits: int = 8
    input_bits: int = 8
    impl: str = "fused"

    def __post_init__(self):
        if self.impl not in IMPLS:
            raise ValueError(f"quant-impl must be one of {', '.join(IMPLS)}, got {self.impl!r}")
        for field in ("weight_bits", "act_bits", "input_bits"):
            bits = getattr(self, field)
            if not (isinstance(bits, int) and MIN_BITS <= bits <= MAX_BITS):
                raise ValueError(f"{field.replace('_', '-')} must be an integer from {MIN_BITS} to "
                                 f"{MAX_BITS}, got {bits!r}")


FLOAT = QuantConfig(enabled=False)


def _quantizers(qc: QuantConfig):
    """(weight, signed activation, unsigned activation) quantizer classes of ``qc.impl``."""
    if qc.impl == "fused":
        from .fastquant import (FusedInt8ActPerTensorFixedPoint, FusedInt8WeightPerTensorFixedPoint,
                                FusedUint8ActPerTensorFixedPoint)
        return FusedInt8WeightPerTensorFixedPoint, FusedInt8ActPerTensorFixedPoint, FusedUint8ActPerTensorFixedPoint
    from brevitas.quant import Int8ActPerTensorFixedPoint, Int8WeightPerTensorFixedPoint, Uint8ActPerTensorFixedPoint
    return Int8WeightPerTensorFixedPoint, Int8ActPerTensorFixedPoint, Uint8ActPerTensorFixedPoint


def conv2d(qc: QuantConfig, cin: int, cout: int, kernel: int, stride: int = 1, padding: int = 0,
           dilation: int = 1, groups: int = 1, bias: bool = False) -> nn.Module:
    """A (quantized) 2-D convolution; its output is the accumulator (not requantized)."""
    if not qc.enabled:
        return nn.Conv2d(cin, cout, kernel, stride, padding, dilation, groups, bias)
    from brevitas.nn import QuantConv2d
    from brevitas.quant import Int32Bias
    return QuantConv2d(cin, cout, kernel, stride, padding, dilation, groups, bias=bias,
                       weight_quant=_quantizers(qc)[0], weight_bit_width=qc.weight_bits,
                       bias_quant=Int32Bias, return_quant_tensor=False)


def linear(qc: QuantConfig, cin: int, cout: int, bias: bool = True) -> nn.Module:
    """A (quantized) fully connected layer; its output is the accumulator."""
    if not qc.enabled:
        return nn.Linear(cin, cout, bias)
    from brevitas.nn import QuantLinear
    from brevitas.quant import Int32Bias
    return QuantLinear(cin, cout, bias=bias, weight_quant=_quantizers(qc)[0],
                       weight_bit_width=qc.weight_bits, bias_quant=Int32Bias, return_quant_tensor=False)


def act(qc: QuantConfig, signed: bool = True, bits: int | None = None) -> nn.Module:
    """Activation requantizer (no non-linearity): signed or unsigned, power-of-two scale."""
    if not qc.enabled:
        return nn.Identity()
    from brevitas.nn import QuantIdentity
    _, signed_quant, unsigned_quant = _quantizers(qc)
    quant = signed_quant if signed else unsigned_quant
    return QuantIdentity(act_quant=quant, bit_width=bits or qc.act_bits, return_quant_tensor=True)


def relu(qc: QuantConfig) -> nn.Module:
    """ReLU followed by an unsigned requantizer (deployed as a clamp at 0)."""
    if not qc.enabled:
        return nn.ReLU(inplace=False)
    from brevitas.nn import QuantReLU
    return QuantReLU(act_quant=_quantizers(qc)[2], bit_width=qc.act_bits, return_quant_tensor=True)


def input_quant(qc: QuantConfig) -> nn.Module:
    """Quantizer of the network input (signed, ``input_bits``)."""
    return act(qc, signed=True, bits=qc.input_bits)


def value(x):
    """The float tensor behind a Brevitas QuantTensor (or ``x`` itself)."""
    return getattr(x, "value", x)
