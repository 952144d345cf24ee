"""Regression cases: which layers to generate, with which folding, and how to stress them.

A *case* is a JSON-able dict::

    {"name": str, "seed": int, "layer": str, "multipliers": int | None,
     "synth": {random_tucker2 keyword arguments} | None,   # a synthetic layer, or
     "artifact": path | None,                              # a layer of this artifact
     "frames": int, "bubble": float, "backpressure": float}

:func:`standard_cases` gives fixed corner cases (every kernel size, stride 2,
2-bit and 8-bit, signed and unsigned, fully folded and fully parallel) followed by
random ones drawn from the seed; :func:`artifact_cases` gives one case per
Tucker-2 layer of an artifact. :func:`check_cases` plans every case's folding before
any simulation starts, so that an unsupported layer or a budget the layer cannot use
is bad input (one line, ``HwError``), not a failed test.
"""
from __future__ import annotations

import random

from .vectors import tucker2_layers

__all__ = ["CORNERS", "random_config", "standard_cases", "reduced_cases", "artifact_cases", "check_cases"]

#: Corner configurations every standard regression runs (keyword arguments of random_tucker2).
CORNERS = [
    ("k1_2bit_signed", dict(channels=4, out_channels=3, ranks=(2, 3), kernel=1, stride=1, padding=0,
                            height=3, width=5, in_bits=2, in_signed=True, weight_bits=2, act_bits=2,
                            out_signed=True, bias=True), None),
    ("k5_s2_pad2_8bit", dict(channels=3, out_channels=5, ranks=(3, 2), kernel=5, stride=2, padding=2,
                             height=7, width=6, in_bits=8, in_signed=False, weight_bits=8, act_bits=8,
                             out_signed=False, bias=True), 16),
    ("k3_s2_nopad_mixed_folded", dict(channels=5, out_channels=4, ranks=(2, 2), kernel=3, stride=2, padding=0,
                                      height=6, width=7, in_bits=4, in_signed=True, weight_bits=3, act_bits=6,
                                      out_signed=True, bias=False), 3),
    ("k3_s1_pad1_parallel", dict(channels=4, out_channels=6, ranks=(3, 4), kernel=3, stride=1, padding=1,
                                 height=5, width=4, in_bits=5, in_signed=False, weight_bits=7, act_bits=5,
                                 out_signed=False, bias=True), 4096),
]


def random_config(rng: random.Random) -> tuple[dict, int | None]:
    """A random Tucker-2 layer (random_tucker2 kwargs) and multiplier budget (None: default)."""
    k = rng.choice([1, 3, 5])
    stride = rng.choice([1, 2])
    pad = rng.randint(0, k // 2)
    lo = max(1, k - 2 * pad)
    cfg = dict(
        channels=rng.randint(1, 8), out_channels=rng.randint(1, 8),
        ranks=(rng.randint(1, 6), rng.randint(1, 6)),
        kernel=k, stride=stride, padding=pad,
        height=rng.randint(lo, max(lo, 8)), width=rng.randint(lo, max(lo, 8)),
        in_bits=rng.randint(2, 8), in_signed=rng.random() < 0.5,
        weight_bits=rng.randint(2, 8), act_bits=rng.randint(2, 8),
        out_signed=rng.random() < 0.5, bias=rng.random() < 0.7,
    )
    mult = rng.choice([None, 3, 4, 6, 8, 12, 16, 24, 48, 96, 512])
    return cfg, mult


def _case(name, seed, cfg, mult, rng, frames=3) -> dict:
    return {"name": name, "seed": seed, "layer": "t2", "multipliers": mult, "synth": cfg, "artifact": None,
            "frames": frames, "bubble": round(rng.uniform(0.1, 0.6), 2),
            "backpressure": round(rng.uniform(0.1, 0.8), 2)}


def standard_cases(seed: int, n_random: int = 8) -> list[dict]:
    """The corner cases plus ``n_random`` random ones, all derived from ``seed``."""
    rng = random.Random(seed)
    cases = [_case(name, seed + i, dict(cfg), mult, rng) for i, (name, cfg, mult) in enumerate(CORNERS)]
    for i in range(n_random):
        cfg, mult = random_config(rng)
        cases.append(_case(f"random{i}", seed + len(CORNERS) + i, cfg, mult, rng))
    return cases


def reduced_cases(seed: int) -> list[dict]:
    """The part of the regression that ``make test`` runs: the k5/stride-2 corner and one random case."""
    full = standard_cases(seed, n_random=1)
    return [full[1], full[-1]]


def artifact_cases(artifact, path: str, seed: int, layers=None, multipliers=None, frames: int = 2) -> list[dict]:
    """One case per Tucker-2 layer of ``artifact`` (or the named ``layers``)."""
    names = tucker2_layers(artifact)
    if layers:
        for name in layers:
            op = artifact.layer(name)["op"]       # ArtifactError (one line) when unknown
            if op != "tucker2":
                from hw.spec import HwError
                raise HwError(f"layer {name!r} has op {op!r}; the regression verifies Tucker-2 layers only "
                              f"(Tucker-2 layers: {', '.join(names) or 'none'})")
        names = list(dict.fromkeys(layers))
    rng = random.Random(seed)
    return [{"name": f"{artifact.manifest['model'].get('name', 'artifact')}.{name}", "seed": seed + i,
             "layer": name, "multipliers": multipliers, "synth": None, "artifact": str(path),
             "frames": frames, "bubble": round(rng.uniform(0.1, 0.5), 2),
             "backpressure": round(rng.uniform(0.1, 0.6), 2)} for i, name in enumerate(names)]


def check_cases(cases: list[dict], artifact=None) -> None:
    """Plan every case's folding (no Amaranth elaboration, no simulation); HwError or
    ArtifactError (one line, naming the case) for a case that cannot be built.

    ``artifact`` is the loaded artifact of artifact cases (else each case's artifact
    path is loaded); synthetic cases make their small random layer.
    """
    from artifact import ArtifactError, load_artifact
    from artifact.synth import random_tucker2
    from hw.engine import check_engine
    from hw.generate import check_options
    from hw.planner import plan_folding
    from hw.spec import layer_stages

    loaded = {}
    for c in cases:
        try:
            check_options(c.get("multipliers"))
            if c.get("synth"):
                kw = dict(c["synth"])
                kw["ranks"] = tuple(kw["ranks"])
                art = random_tucker2(c["seed"], name=c["layer"], **kw)
            elif artifact is not None:
                art = artifact
            else:
                path = str(c["artifact"])
                art = loaded.get(path) or loaded.setdefault(path, load_artifact(path))
            stages = layer_stages(art, c["layer"])
            check_engine(stages, plan_folding(stages, c.get("multipliers")))
        except ArtifactError as e:           # HwError is an ArtifactError
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise type(e)(f"case {c['name']}: {msg}") from None
