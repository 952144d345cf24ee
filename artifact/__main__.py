"""``python -m artifact DIR [--input X.npy] [--output Y.npy]``: validate and summarise an
artifact; with ``--input``, run the golden model on an integer array (N, C, H, W)."""
from __future__ import annotations

import argparse
import sys

import numpy as np

from . import golden
from .io import ArtifactError, load_artifact, stages_of


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


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m artifact", description=__doc__.splitlines()[0])
    p.add_argument("artifact", help="artifact directory (manifest.yaml + tensors.npz)")
    p.add_argument("--input", help="integer input array (.npy) to run through the golden model")
    p.add_argument("--output", help="where to write the output array (.npy)")
    args = p.parse_args(argv)
    try:
        art = load_artifact(args.artifact)
        print(summary(art))
        if args.input:
            x = np.load(args.input, allow_pickle=False)
            want = tuple(art.manifest["input"]["shape"])
            if x.ndim != len(want) + 1 or tuple(x.shape[1:]) != want or not np.issubdtype(x.dtype, np.integer):
                raise ArtifactError(f"--input must be an integer array of shape (N, {', '.join(map(str, want))}), "
                                    f"got {x.dtype} {x.shape}")
            y = golden.run(art, x)
            if args.output:
                np.save(args.output, y)
            print(f"output {y.shape}; argmax {y.reshape(len(y), -1).argmax(1).tolist()[:16]}")
    except (ArtifactError, OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
