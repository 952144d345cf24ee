"""The integer deployment artifact: format, validation, bounds and the golden reference.

NumPy only: nothing here imports torch, so hardware, simulation and HLS code can use
an artifact without the training stack.
"""
from .base import ArtifactError, conv_out_hw, conv_out_size, int_range, signed_bits
from .io import (FORMAT, FORMAT_VERSION, Artifact, check_input_array, is_artifact_dir, load_artifact,
                 save_artifact, stages_of, validate)

__all__ = ["FORMAT", "FORMAT_VERSION", "Artifact", "ArtifactError", "check_input_array", "conv_out_hw",
           "conv_out_size", "int_range", "is_artifact_dir", "load_artifact", "save_artifact", "signed_bits",
           "stages_of", "validate"]
