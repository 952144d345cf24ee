"""hls4ml path: an artifact's integer model as a Vivado/Vitis HLS project, C-simulation bit-exact.

The artifact (not a framework model) is the input: :func:`convert` builds an ``io_stream``
hls4ml ModelGraph of the whole network or of one layer, with every fixed-point type
derived from the manifest (see :mod:`.precision` for the exactness argument);
:func:`compare` compiles the C simulation with g++ and counts mismatches with the golden
model (artifact/golden.py); ``python -m deploy.hls4ml`` does both and writes the project.
Nothing here imports torch. docs/hls4ml.md describes the mapping and hls4ml's limits.
"""
from .convert import BACKENDS, HLSBuild, Stream, convert, layer_input_specs
from .csim import CsimResult, compare, compile_model, run_csim, stimulus
from .precision import HLSConversionError, fixed, requant_type
from .tools import HLS_TOOLS, check_part, find_hls_tool, synthesize

__all__ = ["BACKENDS", "HLSBuild", "Stream", "convert", "layer_input_specs", "CsimResult", "compare",
           "compile_model", "run_csim", "stimulus", "HLSConversionError", "fixed", "requant_type", "HLS_TOOLS",
           "check_part", "find_hls_tool", "synthesize"]
