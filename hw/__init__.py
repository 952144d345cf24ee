"""Amaranth dataflow accelerators for artifact layers (Tucker-2 U1 -> G -> U2, dense baseline).

Blocks (each an ``amaranth.lib.wiring.Component`` with ``lib.stream`` ports):

* :class:`hw.mvu.MatrixVectorUnit` - folded PE x SIMD matrix-vector unit, weights in ROM;
* :class:`hw.swg.SlidingWindowGenerator` - k x k windows from line buffers (stride, padding);
* :class:`hw.requant.Requantizer` - rounding shift (half to even) and clamp;
* :class:`hw.engine.LayerEngine` - a layer's stages streamed back to back.

:func:`hw.planner.plan_folding` chooses the folding for a multiplier budget and
:func:`hw.generate.generate` writes Verilog plus a JSON description. See docs/hw.md.
Nothing here imports torch or the training code.
"""
from .spec import HwError, StageSpec, layer_stages

__all__ = ["HwError", "StageSpec", "layer_stages"]
