"""``python -m artifact DIR [--input X.npy] [--output Y.npy]``: validate and summarise an
artifact; with ``--input``, run the golden model on an integer array (N, C, H, W).

Bad input (an artifact that breaks a rule of docs/artifact.md section 5, an input array
whose shape, dtype or values do not fit the artifact's input record, an output path that
cannot be written) is one line on stderr and exit status 2, with nothing written."""
from __future__ import annotations

import sys

import numpy as np

from . import golden
from .base import ArtifactError
from .cli import Parser, UsageError, check_out_file, fail, load_npy
from .files import atomic_save_npy
from .io import check_input_array, load_artifact, stages_of

PROG = "python -m artifact"


def summary(art) -> str:
    m = art.manifest
    lines = [f"{m['model'].get('name', '?')}: format {m['format']} v{m['format_version']}, "
             f"input {m['input']['shape']} {m['input']['bits']}-bit, output {m['output']}"]
    for layer in m["layers"]:
        stages = stages_of(layer)
        bits = "/".join(str(s["acc"]["bits"]) for s in stages) if stages else ""
        rank = f" rank {layer['rank']}" if "rank" in layer else ""
        lines.append(f"  {layer['name']:<22} {layer['op']:<16} -> {layer['out']['shape']} "
                     f"{layer['out']['bits']}b{'s' if layer['out']['signed'] else 'u'}{rank}"
                     + (f" acc {bits}b" if bits else ""))
    return "\n".join(lines)


def _load_input(path: str, manifest: dict) -> np.ndarray:
    return check_input_array(manifest, load_npy(path, "--input"), f"--input {path}")


def main(argv=None) -> int:
    p = Parser(prog=PROG, description=__doc__.splitlines()[0])
    p.add_argument("artifact", help="artifact directory (manifest.yaml + tensors.npz)")
    p.add_argument("--input", help="integer input array (.npy, shape (N, *input.shape)) to run through the golden model")
    p.add_argument("--output", help="where to write the output array (a path ending in .npy; needs --input)")
    args = p.parse_args(argv)
    try:
        if args.output and not args.input:
            raise UsageError("--output needs --input")
        if args.output:
            check_out_file(args.output, ".npy")
        art = load_artifact(args.artifact)
        x = _load_input(args.input, art.manifest) if args.input else None
        print(summary(art))
        if x is not None:
            y = golden.run(art, x)
            if args.output:
                atomic_save_npy(args.output, y)
            print(f"output {y.shape}; argmax {y.reshape(len(y), -1).argmax(1).tolist()[:16]}")
    except (ArtifactError, UsageError, OSError) as e:
        return fail(PROG, e)
    return 0


if __name__ == "__main__":
    sys.exit(main())
