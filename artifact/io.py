"""Reading, validating and writing artifact directories (``manifest.yaml`` + ``tensors.npz``).

The format is specified in docs/artifact.md; ``manifest.schema.json`` is its
machine-checkable part. :func:`load_artifact` checks every numbered rule of the
spec's section 5: the files (rule 1), the schema (2), and through the op table
(:mod:`artifact.ops`) everything a schema cannot check: names, graph, records that
match their producers, shapes, tensors, exponents, shifts and clamps, worst-case
accumulator widths and the int64 bound. :func:`check_input_array` is rule 12.
"""
from __future__ import annotations

import functools
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

from .base import ArtifactError, dtype_for_bits, int_range
from .files import umask_mode
from .ops import check_keys, check_layer, check_tensor_record, rule_error

FORMAT = "elrt-artifact"
FORMAT_VERSION = 1
MANIFEST = "manifest.yaml"
TENSORS = "tensors.npz"


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


def check_input_array(manifest: dict, x, what: str = "input") -> np.ndarray:
    """Check an integer input batch against the artifact's ``input`` record and return it
    as int64: shape ``(N, *input.shape)`` with ``N >= 1``, an integer dtype, every value in
    the input's declared bit range. ArtifactError (one line, naming ``what``) otherwise.

    Every tool that accepts input arrays (``python -m artifact --input``, the hls4ml
    path, the host tool, the simulators) calls this before any work starts."""
    rec = manifest["input"]
    want = tuple(rec["shape"])
    x = np.asarray(x)
    dims = ", ".join(map(str, want))
    if x.dtype == object or not np.issubdtype(x.dtype, np.integer) or x.dtype == np.uint64:
        raise ArtifactError(f"{what}: expected an integer array of shape (N, {dims}), got dtype {x.dtype}; "
                            f"quantize floats first (artifact.golden.quantize_input)")
    if x.ndim != len(want) + 1 or tuple(x.shape[1:]) != want or x.shape[0] < 1:
        raise ArtifactError(f"{what}: expected shape (N, {dims}) with N >= 1, got {tuple(x.shape)}")
    lo, hi = int_range(rec["bits"], rec["signed"])
    xmin, xmax = int(x.min()), int(x.max())
    if xmin < lo or xmax > hi:
        kind = "signed" if rec["signed"] else "unsigned"
        raise ArtifactError(f"{what}: values in [{xmin}, {xmax}] lie outside the input's {rec['bits']}-bit "
                            f"{kind} range [{lo}, {hi}]; quantize with artifact.golden.quantize_input")
    return x.astype(np.int64)


@functools.lru_cache(maxsize=1)
def _schema_validator():
    schema = json.loads(resources.files(__package__).joinpath("manifest.schema.json").read_text())
    return jsonschema.Draft202012Validator(schema)


def _schema() -> dict:
    return _schema_validator().schema


def stages_of(layer: dict) -> list[dict]:
    """The MAC stages of a layer: itself for conv/linear, its stages for factorized ops."""
    if layer["op"] in ("conv", "linear"):
        return [layer]
    return list(layer.get("stages", []))


# libyaml's safe loader when PyYAML has it (same documents, several times faster).
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_TOP_KEYS = frozenset({"format", "format_version", "model", "input", "output", "layers"})


def validate(manifest: dict, tensors: dict) -> dict:
    """Check every rule of docs/artifact.md section 5 (rules 2-11; rule 1 is the files,
    rule 12 the inputs). Raise ArtifactError naming the layer and the rule of the first
    problem found; else return ``{tensor name: declared bit width}``."""
    if not isinstance(manifest, dict):
        raise rule_error(MANIFEST, 2, "the manifest is not a YAML mapping")
    if manifest.get("format") != FORMAT:
        raise rule_error(MANIFEST, 2, f"format is {manifest.get('format')!r}, not {FORMAT!r}; "
                                      f"this is not an ELRT artifact")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise rule_error(MANIFEST, 2, f"unknown format_version {manifest.get('format_version')!r}; this reader "
                                      f"knows version {FORMAT_VERSION} (re-export the run with this version of "
                                      f"the package: python -m model.export RUN_DIR)")
    validator = _schema_validator()
    if not validator.is_valid(manifest):
        e = jsonschema.exceptions.best_match(validator.iter_errors(manifest))
        field = "/".join(str(p) for p in e.absolute_path) or "(top level)"
        raise rule_error(MANIFEST, 2, f"field {field}: {e.message.splitlines()[0]}")
    check_keys(MANIFEST, manifest, _TOP_KEYS, "the manifest")
    check_tensor_record("input", manifest["input"], "input")
    produced = {"input": manifest["input"]}
    used: dict = {}
    for layer in manifest["layers"]:
        name = layer["name"]
        if name in produced:
            raise rule_error(name, 3, f"layer name {name!r} is used twice (or is the reserved name 'input')")
        operands = []
        for src in layer["inputs"]:
            if src not in produced:
                raise rule_error(name, 4, f"input {src!r} is not produced by an earlier layer")
            operands.append((src, produced[src]))
        check_layer(layer, operands, tensors, used)
        produced[name] = layer["out"]
    if manifest["output"] not in produced or manifest["output"] == "input":
        raise rule_error(MANIFEST, 4, f"output {manifest['output']!r} is not a layer of the artifact")
    extra = sorted(set(tensors) - set(used))
    if extra:
        raise rule_error(TENSORS, 7, f"holds tensors the manifest does not use: {', '.join(extra)}")
    return used


def _read_manifest(path: Path) -> dict:
    try:
        text = (path / MANIFEST).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise rule_error(str(path / MANIFEST), 1, f"cannot be read ({type(e).__name__}: "
                                                  f"{str(e).splitlines()[0] if str(e) else ''})") from None
    try:
        manifest = yaml.load(text, Loader=_YAML_LOADER)
    except yaml.YAMLError as e:
        raise rule_error(str(path / MANIFEST), 1, f"is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(manifest, dict):
        raise rule_error(str(path / MANIFEST), 1, "is not a YAML mapping (an empty or damaged file?)")
    return manifest


def _read_tensors(path: Path) -> dict:
    """The archive's arrays; any damage (truncated, empty, not a zip, pickled objects)
    is a rule-1 ArtifactError."""
    try:
        with np.load(path / TENSORS, allow_pickle=False) as npz:     # a lone .npy array is no context manager
            return {k: npz[k] for k in npz.files}
    except Exception as e:  # zipfile.BadZipFile, EOFError, ValueError (pickles), OSError, zlib.error ...
        detail = str(e).splitlines()[0] if str(e) else ""
        raise rule_error(str(path / TENSORS), 1, f"cannot be read ({type(e).__name__}{': ' + detail if detail else ''}); "
                                                 f"the archive is damaged: re-export the artifact") from None


def is_artifact_dir(path) -> bool:
    """True when ``path`` is a folder holding only an artifact's files (what
    :func:`save_artifact` writes), so that replacing it loses nothing else."""
    path = Path(path)
    if not path.is_dir():
        return False
    names = {p.name for p in path.iterdir()}
    if names != {MANIFEST, TENSORS}:
        return False
    try:
        return yaml.safe_load((path / MANIFEST).read_text()).get("format") == FORMAT
    except Exception:
        return False


def load_artifact(path) -> Artifact:
    """Load and validate an artifact directory. Raises ArtifactError (one line, naming
    the layer and the rule of docs/artifact.md section 5) on any problem."""
    path = Path(path)
    if not path.is_dir() or not (path / MANIFEST).is_file():
        raise rule_error(str(path), 1, f"not an artifact directory (no {MANIFEST}); export one with "
                                       f"`python -m model.export RUN_DIR`")
    manifest = _read_manifest(path)
    if not (path / TENSORS).is_file():
        raise rule_error(str(path), 1, f"has no {TENSORS}")
    tensors = _read_tensors(path)
    validate(manifest, tensors)
    return Artifact(manifest, tensors, path)


def save_artifact(path, manifest: dict, tensors: dict) -> Path:
    """Validate and write an artifact directory atomically (temp dir + rename).

    Each tensor is stored in the smallest dtype that holds its declared width (the
    writer's rule). An existing ``path`` is replaced only when it is an artifact
    directory (:func:`is_artifact_dir`); anything else there is refused, never deleted."""
    widths = validate(manifest, tensors)
    path = Path(path)
    if path.exists() and not is_artifact_dir(path):
        kind = "folder" if path.is_dir() else "file"
        raise ArtifactError(f"{path} exists and is a {kind} that is not an artifact; choose another output "
                            f"folder (nothing was written)")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        os.chmod(tmp, umask_mode(0o777))
        (tmp / MANIFEST).write_text(yaml.safe_dump(manifest, sort_keys=False))
        stored = {k: np.asarray(v).astype(dtype_for_bits(widths[k])) for k, v in tensors.items()}
        np.savez(tmp / TENSORS, **stored)
        for name in (MANIFEST, TENSORS):
            os.chmod(tmp / name, umask_mode(0o666))
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old.", dir=path.parent))
            os.rmdir(old)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path
