"""The integer deployment artifact: format, validation, bounds and the golden reference.

NumPy only: nothing here imports torch, so hardware, simulation and HLS code can use
an artifact without the training stack.
"""
from .io import (FORMAT, FORMAT_VERSION, Artifact, ArtifactError, int_range, load_artifact,
                 save_artifact, stages_of, validate)

__all__ = ["FORMAT", "FORMAT_VERSION", "Artifact", "ArtifactError", "int_range", "load_artifact",
           "save_artifact", "stages_of", "validate"]
