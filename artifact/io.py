"""Reading, validating and writing artifact directories (``manifest.yaml`` + ``tensors.npz``).

The format is specified in docs/artifact.md; ``manifest.schema.json`` is its
machine-checkable part. :func:`load_artifact` validates the manifest against the
schema and then checks what a schema cannot: that the tensors named by the manifest
exist (and no others), are integers of the declared bit width and have shapes that
agree with the layer geometry.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import jsonschema
import numpy as np
import yaml

FORMAT = "elrt-artifact"
FORMAT_VERSION = 1
MANIFEST = "manifest.yaml"
TENSORS = "tensors.npz"


class ArtifactError(ValueError):
    """An artifact is missing, malformed or inconsistent. The message is one line."""


@dataclass
class Artifact:
    """A loaded artifact: the manifest dict and the integer tensors by name."""

    manifest: dict
    tensors: dict
    path: Path | None = None

    def layer(self, name: str) -> dict:
        """The manifest record of layer ``name`` (ArtifactError if absent)."""
        for layer in self.manifest["layers"]:
            if layer["name"] == name:
                return layer
        known = ", ".join(l["name"] for l in self.manifest["layers"])
        raise ArtifactError(f"artifact has no layer {name!r} (layers: {known})")

    def layers(self, op: str | None = None) -> list[dict]:
        """Layers in execution order, optionally only those of one ``op``."""
        return [l for l in self.manifest["layers"] if op is None or l["op"] == op]


def int_range(bits: int, signed: bool) -> tuple[int, int]:
    """Inclusive range of a ``bits``-wide two's-complement (or unsigned) integer."""
    return (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)


def _schema() -> dict:
    return json.loads(resources.files(__package__).joinpath("manifest.schema.json").read_text())


def stages_of(layer: dict) -> list[dict]:
    """The MAC stages of a layer: itself for conv/linear, its stages for factorized ops."""
    if layer["op"] in ("conv", "linear"):
        return [layer]
    return list(layer.get("stages", []))


def _where(layer: dict, stage: dict) -> str:
    return layer["name"] if stage is layer else f"{layer['name']}.{stage['name']}"


def _check_stage(layer: dict, stage: dict, tensors: dict, used: set) -> None:
    where = _where(layer, stage)
    w = tensors.get(stage["weight"])
    if w is None:
        raise ArtifactError(f"{where}: weight tensor {stage['weight']!r} is missing from {TENSORS}")
    used.add(stage["weight"])
    cin, cout = stage["in"]["shape"][0], stage["out"]["shape"][0]
    if stage["kind"] == "conv":
        k, g = stage["kernel"], stage["groups"]
        want = (cout, cin // g, k, k)
        if len(stage["in"]["shape"]) != 3 or len(stage["out"]["shape"]) != 3:
            raise ArtifactError(f"{where}: conv in/out shapes must be [C, H, W]")
        h, wd = stage["in"]["shape"][1:]
        ho = (h + 2 * stage["padding"] - k) // stage["stride"] + 1
        wo = (wd + 2 * stage["padding"] - k) // stage["stride"] + 1
        if list(stage["out"]["shape"][1:]) != [ho, wo]:
            raise ArtifactError(f"{where}: out shape {stage['out']['shape']} does not follow from in shape "
                                f"{stage['in']['shape']}, kernel {k}, stride {stage['stride']}, padding {stage['padding']}")
    else:
        want = (cout, cin)
    if tuple(w.shape) != want:
        raise ArtifactError(f"{where}: weight {stage['weight']!r} has shape {list(w.shape)}, manifest implies {list(want)}")
    _check_ints(where, stage["weight"], w, stage["weight_bits"], True)
    if stage["bias"] is not None:
        b = tensors.get(stage["bias"])
        if b is None:
            raise ArtifactError(f"{where}: bias tensor {stage['bias']!r} is missing from {TENSORS}")
        used.add(stage["bias"])
        if tuple(b.shape) != (cout,):
            raise ArtifactError(f"{where}: bias {stage['bias']!r} has shape {list(b.shape)}, expected [{cout}]")
        _check_ints(where, stage["bias"], b, stage.get("bias_bits", stage["acc"]["bits"]), True)


def _check_ints(where: str, name: str, arr: np.ndarray, bits: int, signed: bool) -> None:
    if not np.issubdtype(arr.dtype, np.integer):
        raise ArtifactError(f"{where}: tensor {name!r} has dtype {arr.dtype}, expected an integer dtype")
    lo, hi = int_range(bits, signed)
    if arr.size and (int(arr.min()) < lo or int(arr.max()) > hi):
        raise ArtifactError(f"{where}: tensor {name!r} has values in [{int(arr.min())}, {int(arr.max())}], "
                            f"outside its declared {bits}-bit range [{lo}, {hi}]")


def validate(manifest: dict, tensors: dict) -> None:
    """Raise ArtifactError naming the first problem found, else return None."""
    if not isinstance(manifest, dict):
        raise ArtifactError(f"{MANIFEST} is not a mapping")
    if manifest.get("format_version") not in (None, FORMAT_VERSION) and manifest.get("format") == FORMAT:
        raise ArtifactError(f"unknown format_version {manifest.get('format_version')!r}; this reader knows "
                            f"version {FORMAT_VERSION} (re-export the run with this version of the package)")
    try:
        jsonschema.validate(manifest, _schema())
    except jsonschema.ValidationError as e:
        field = "/".join(str(p) for p in e.absolute_path) or "(top level)"
        raise ArtifactError(f"{MANIFEST}: field {field}: {e.message.splitlines()[0]}") from None
    known = {"input"}
    used: set = set()
    names = set()
    for layer in manifest["layers"]:
        if layer["name"] in names or layer["name"] == "input":
            raise ArtifactError(f"layer name {layer['name']!r} is used twice")
        names.add(layer["name"])
        for src in layer["inputs"]:
            if src not in known:
                raise ArtifactError(f"{layer['name']}: input {src!r} is not produced by an earlier layer")
        for stage in stages_of(layer):
            _check_stage(layer, stage, tensors, used)
        known.add(layer["name"])
    if manifest["output"] not in known:
        raise ArtifactError(f"output {manifest['output']!r} is not a layer of the artifact")
    extra = sorted(set(tensors) - used)
    if extra:
        raise ArtifactError(f"{TENSORS} holds tensors the manifest does not use: {', '.join(extra)}")


def load_artifact(path) -> Artifact:
    """Load and validate an artifact directory. Raises ArtifactError (one line) on any problem."""
    path = Path(path)
    if not (path / MANIFEST).is_file():
        raise ArtifactError(f"{path} is not an artifact directory (no {MANIFEST}); export one with "
                            f"`python -m model.export RUN_DIR`")
    try:
        manifest = yaml.safe_load((path / MANIFEST).read_text())
    except yaml.YAMLError as e:
        raise ArtifactError(f"{path / MANIFEST} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not (path / TENSORS).is_file():
        raise ArtifactError(f"{path} has no {TENSORS}")
    try:
        with np.load(path / TENSORS, allow_pickle=False) as npz:
            tensors = {k: npz[k] for k in npz.files}
    except (ValueError, OSError) as e:
        raise ArtifactError(f"{path / TENSORS} cannot be read: {e}") from None
    validate(manifest, tensors)
    return Artifact(manifest, tensors, path)


def save_artifact(path, manifest: dict, tensors: dict) -> Path:
    """Validate and write an artifact directory atomically (temp dir + rename)."""
    validate(manifest, tensors)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        (tmp / MANIFEST).write_text(yaml.safe_dump(manifest, sort_keys=False))
        np.savez(tmp / TENSORS, **tensors)
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path
