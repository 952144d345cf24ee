"""Data sets for training: scikit-learn digits (embedded default), CIFAR-10 from a local
folder (python-pickle format), and synthetic random tensors (speed tests).

All sets are held in memory as float tensors, already normalised:

* ``digits``: the 1,797 real 8x8 grey images that ship with scikit-learn, pixel 0..16
  mapped to [-1, 1]; a stratified 80/20 train/test split with a fixed seed
  (``SPLIT_SEED``, independent of the run seed), so every run sees the same split.
  Training augmentation: random shifts of up to one pixel (zero-pixel padding).
* ``cifar10``: ``data_batch_1..5``, ``test_batch`` and ``batches.meta`` from
  ``data_dir``; per-channel mean/std normalisation; training augmentation: random
  crop with 4-pixel zero padding and horizontal flip. The pickles are read with a
  restricted unpickler (dicts, lists, bytes, str, numbers and NumPy arrays only; a file
  that names any other global, e.g. ``os.system``, is a DataError and nothing in it
  runs), and every batch is checked: ``data`` a uint8 array of shape (N, 3072), N >= 1,
  ``labels`` N integers in 0..9.
* ``synthetic``: Gaussian inputs of ``synthetic_shape`` with random labels.

Shuffling and augmentation are driven by explicit ``torch.Generator`` objects, so a
run is a pure function of its seed (see ``model/train_qat.py``).
"""
from __future__ import annotations

import os
import pickle
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

DATASETS = ("digits", "cifar10", "synthetic")
SPLIT_SEED = 20240119          # digits train/test split: fixed, independent of the run seed
DIGITS_TEST_FRACTION = 0.2
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)


def preprocess(name: str) -> dict | None:
    """How a raw image becomes the network input: ``x = (pixel / scale - mean[c]) / std[c]``
    (recorded in the artifact manifest so host tools can prepare images)."""
    if name == "digits":
        return {"scale": 16.0, "mean": [0.5], "std": [0.5]}
    if name == "cifar10":
        return {"scale": 255.0, "mean": list(CIFAR_MEAN), "std": list(CIFAR_STD)}
    return None
CIFAR_TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR_FILES = CIFAR_TRAIN_FILES + ("test_batch", "batches.meta")


class DataError(ValueError):
    """A data set that cannot be loaded (unknown name, missing or corrupt files)."""


class TensorSet(Dataset):
    """In-memory (images, labels); ``__getitems__`` returns whole batches (no per-sample collate)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], self.y[i]

    def __getitems__(self, indices):
        idx = torch.as_tensor(indices, dtype=torch.long)
        return self.x[idx], self.y[idx]


def _batch(b):
    """collate_fn for ``TensorSet``: the batch is already stacked."""
    return b


@dataclass
class Augment:
    """Random translation (pad + crop) and optional horizontal flip of a batch."""

    pad: int = 0
    flip: bool = False
    fill: tuple = (0.0,)       # normalised value of a black pixel, per channel

    @property
    def active(self) -> bool:
        return self.pad > 0 or self.flip

    def __call__(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Augment batch ``x`` (B, C, H, W); all randomness comes from ``gen``."""
        b, c, h, w = x.shape
        if self.pad:
            p = self.pad
            padded = torch.empty(b, c, h + 2 * p, w + 2 * p, dtype=x.dtype)
            padded[:] = torch.tensor(self.fill, dtype=x.dtype).view(1, -1, 1, 1)
            padded[:, :, p:p + h, p:p + w] = x
            oy = torch.randint(0, 2 * p + 1, (b,), generator=gen)
            ox = torch.randint(0, 2 * p + 1, (b,), generator=gen)
            rows = (oy[:, None] + torch.arange(h))[:, None, :, None]          # B,1,H,1
            cols = (ox[:, None] + torch.arange(w))[:, None, None, :]          # B,1,1,W
            x = padded[torch.arange(b)[:, None, None, None], torch.arange(c)[None, :, None, None], rows, cols]
        if self.flip:
            flip = torch.rand(b, generator=gen) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(3), x)
        return x


@dataclass
class DataBundle:
    name: str
    train: TensorSet
    test: TensorSet
    in_shape: tuple            # (C, H, W)
    num_classes: int
    augment: Augment
    classes: tuple = ()

    def describe(self) -> str:
        return (f"{self.name}: {len(self.train)} train / {len(self.test)} test images of "
                f"{'x'.join(map(str, self.in_shape))}, {self.num_classes} classes")


# ----------------------------------------------------------------------------- loaders

def load_digits() -> tuple[TensorSet, TensorSet]:
    """scikit-learn digits, normalised to [-1, 1], stratified split fixed by ``SPLIT_SEED``."""
    from sklearn.datasets import load_digits as _load
    from sklearn.model_selection import train_test_split
    d = _load()
    x = torch.tensor(d.data, dtype=torch.float32).view(-1, 1, 8, 8) / 16.0 * 2.0 - 1.0
    y = torch.tensor(d.target, dtype=torch.long)
    tr, te = train_test_split(np.arange(len(y)), test_size=DIGITS_TEST_FRACTION, random_state=SPLIT_SEED,
                              stratify=d.target)
    tr, te = torch.as_tensor(tr), torch.as_tensor(te)
    return TensorSet(x[tr], y[tr]), TensorSet(x[te], y[te])


class _CifarUnpickler(pickle.Unpickler):
    """An unpickler that builds only what a CIFAR-10 python batch holds: dicts, lists,
    bytes, str, numbers and NumPy arrays. Any other global (``os.system``,
    ``builtins.eval``, a class to instantiate ...) is refused before it is looked up, so
    a crafted file cannot run code."""

    @staticmethod
    def _allowed() -> dict:
        try:
            from numpy._core import multiarray, numeric        # NumPy 2
        except ImportError:                                     # NumPy 1.x
            from numpy.core import multiarray, numeric
        return {
            # ndarray reconstruction (NumPy 1.x pickles name numpy.core, 2.x numpy._core)
            ("numpy.core.multiarray", "_reconstruct"): multiarray._reconstruct,
            ("numpy._core.multiarray", "_reconstruct"): multiarray._reconstruct,
            ("numpy.core.numeric", "_frombuffer"): numeric._frombuffer,      # protocol 5
            ("numpy._core.numeric", "_frombuffer"): numeric._frombuffer,
            ("numpy", "ndarray"): np.ndarray,
            ("numpy", "dtype"): np.dtype,
            # bytes inside a protocol-2 pickle written by Python 3 (encodes a str; runs nothing)
            ("_codecs", "encode"): __import__("codecs").encode,
        }

    def find_class(self, module, name):
        obj = self._allowed().get((module, name))
        if obj is None:
            raise DataError(f"{self.path} holds a pickled {module}.{name}, which a CIFAR-10 batch never does; "
                            f"refusing to load it (only dicts, lists, bytes, str, numbers and NumPy arrays are "
                            f"allowed)")
        return obj

    def __init__(self, f, path: str):
        super().__init__(f, encoding="bytes")
        self.path = path


def _unpickle(path: str) -> dict:
    """A CIFAR-10 pickle file, loaded with :class:`_CifarUnpickler` (never plain ``pickle.load``)."""
    try:
        with open(path, "rb") as f:
            obj = _CifarUnpickler(f, path).load()
    except FileNotFoundError:
        raise DataError(f"CIFAR-10 file {path} is missing; the folder needs {', '.join(CIFAR_FILES)}") from None
    except DataError:
        raise
    except IsADirectoryError:
        raise DataError(f"CIFAR-10 file {path} is a folder, not a file") from None
    except Exception as e:
        raise DataError(f"cannot read CIFAR-10 file {path} ({type(e).__name__}); is it the python-pickle "
                        f"version of CIFAR-10?") from None
    if not isinstance(obj, dict):
        raise DataError(f"{path} is not a CIFAR-10 pickle batch (expected a dict, got {type(obj).__name__})")
    return {k.decode("latin-1") if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _cifar_batch(path: str) -> tuple[np.ndarray, np.ndarray]:
    """(images (N, 3, 32, 32) uint8, labels (N,) int64) of one batch file, every invariant checked."""
    d = _unpickle(path)
    if "data" not in d or "labels" not in d:
        raise DataError(f"{path} is not a CIFAR-10 batch (it needs 'data' and 'labels')")
    data, labels = d["data"], d["labels"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        what = (f"an array of dtype {data.dtype} and shape {data.shape}" if isinstance(data, np.ndarray)
                else f"a {type(data).__name__}")
        raise DataError(f"{path}: 'data' must be a uint8 array of shape (N, 3072), got {what}")
    if len(data) == 0:
        raise DataError(f"{path}: the batch holds no images")
    if isinstance(labels, np.ndarray):
        if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
            raise DataError(f"{path}: 'labels' must be a list of integers, got an array of dtype {labels.dtype} "
                            f"and shape {labels.shape}")
        labels = labels.astype(np.int64)
    elif isinstance(labels, list):
        if not all(type(v) is int for v in labels):
            bad = next(v for v in labels if type(v) is not int)
            raise DataError(f"{path}: 'labels' must be a list of integers, found {bad!r}")
        labels = np.asarray(labels, dtype=np.int64) if labels else np.zeros(0, np.int64)
    else:
        raise DataError(f"{path}: 'labels' must be a list of integers, got a {type(labels).__name__}")
    if len(labels) != len(data):
        raise DataError(f"{path}: {len(data)} images but {len(labels)} labels; the file is damaged")
    if labels.min() < 0 or labels.max() > 9:
        raise DataError(f"{path}: labels must lie in 0..9, found {int(labels.min())}..{int(labels.max())}")
    return data.reshape(-1, 3, 32, 32), labels


def _label_names(path: str) -> tuple:
    meta = _unpickle(path)
    names = meta.get("label_names")
    if names is None:
        return ()
    if (not isinstance(names, list) or len(names) != 10
            or not all(isinstance(n, (bytes, str)) for n in names)):
        raise DataError(f"{path}: 'label_names' must be a list of 10 names")
    return tuple(n.decode("utf-8", "replace") if isinstance(n, bytes) else n for n in names)


def load_cifar10(data_dir: str) -> tuple[TensorSet, TensorSet, tuple]:
    """CIFAR-10 (python pickle format) from ``data_dir``, normalised per channel."""
    if not data_dir:
        raise DataError("--data cifar10 needs --data-dir PATH (a folder with data_batch_1..5, test_batch, "
                        "batches.meta)")
    if not os.path.isdir(data_dir):
        raise DataError(f"data folder {data_dir} does not exist; give --data-dir the folder that holds "
                        f"data_batch_1..5, test_batch and batches.meta")
    parts = [_cifar_batch(os.path.join(data_dir, f)) for f in CIFAR_TRAIN_FILES]
    xtr, ytr = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    xte, yte = _cifar_batch(os.path.join(data_dir, "test_batch"))
    names = _label_names(os.path.join(data_dir, "batches.meta"))
    mean = torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR_STD).view(1, 3, 1, 1)

    def norm(a):
        return (torch.from_numpy(a).float() / 255.0 - mean) / std

    return (TensorSet(norm(xtr), torch.from_numpy(ytr)), TensorSet(norm(xte), torch.from_numpy(yte)),
            names or tuple(str(i) for i in range(10)))


def load_synthetic(shape, size: int, num_classes: int = 10, seed: int = 0) -> tuple[TensorSet, TensorSet]:
    """Random N(0, 1) inputs of ``shape`` with random labels: ``size`` train and ``size // 4`` test."""
    g = torch.Generator().manual_seed(seed)
    n_test = max(1, size // 4)
    x = torch.randn(size + n_test, *shape, generator=g)
    y = torch.randint(0, num_classes, (size + n_test,), generator=g)
    return TensorSet(x[:size], y[:size]), TensorSet(x[size:], y[size:])


def _subset(ds: TensorSet, n: int) -> TensorSet:
    return ds if not n or n >= len(ds) else TensorSet(ds.x[:n], ds.y[:n])


def load(cfg: dict) -> DataBundle:
    """The data set a run configuration names (keys: data, data_dir, augment, train_subset,
    test_subset, synthetic_shape, synthetic_size, seed). Raises DataError."""
    name = cfg.get("data", "digits")
    augment = bool(cfg.get("augment", True))
    if name == "digits":
        train, test = load_digits()
        bundle = DataBundle(name, train, test, (1, 8, 8), 10, Augment(pad=1 if augment else 0, fill=(-1.0,)),
                            tuple(str(i) for i in range(10)))
    elif name == "cifar10":
        train, test, names = load_cifar10(cfg.get("data_dir"))
        fill = tuple(-m / s for m, s in zip(CIFAR_MEAN, CIFAR_STD))
        bundle = DataBundle(name, train, test, (3, 32, 32), 10,
                            Augment(pad=4 if augment else 0, flip=augment, fill=fill), names)
    elif name == "synthetic":
        shape = tuple(int(v) for v in cfg.get("synthetic_shape", (3, 32, 32)))
        train, test = load_synthetic(shape, int(cfg.get("synthetic_size", 512)), 10, int(cfg.get("seed", 0)))
        bundle = DataBundle(name, train, test, shape, 10, Augment(), tuple(str(i) for i in range(10)))
    else:
        raise DataError(f"unknown data set {name!r}; choose one of: {', '.join(DATASETS)}")
    bundle.train = _subset(bundle.train, int(cfg.get("train_subset") or 0))
    bundle.test = _subset(bundle.test, int(cfg.get("test_subset") or 0))
    return bundle


# ----------------------------------------------------------------------------- loaders

class EpochSampler(Sampler):
    """Shuffles with a permutation that depends only on (seed, epoch), split across
    ``world`` processes like ``DistributedSampler`` (padded to equal length)."""

    def __init__(self, n: int, seed: int, shuffle: bool = True, rank: int = 0, world: int = 1):
        self.n, self.seed, self.shuffle, self.rank, self.world = n, seed, shuffle, rank, world
        self.epoch = 0
        self.per_rank = -(-n // world)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def generator(self) -> torch.Generator:
        return torch.Generator().manual_seed(_mix(self.seed, self.epoch, 0x5EED))

    def __iter__(self):
        order = torch.randperm(self.n, generator=self.generator()) if self.shuffle else torch.arange(self.n)
        total = self.per_rank * self.world
        if total > self.n:
            order = torch.cat([order, order[: total - self.n]])
        return iter(order[self.rank:total:self.world].tolist())

    def __len__(self) -> int:
        return self.per_rank


def _mix(*values: int) -> int:
    """A 63-bit seed from integers (SplitMix-style), stable across runs and platforms."""
    h = 0x9E3779B97F4A7C15
    for v in values:
        h ^= (int(v) & 0xFFFFFFFFFFFFFFFF) + 0x9E3779B97F4A7C15 + ((h << 6) & 0xFFFFFFFFFFFFFFFF) + (h >> 2)
        h &= 0xFFFFFFFFFFFFFFFF
        h ^= h >> 31
        h = (h * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
        h ^= h >> 27
    return h & 0x7FFFFFFFFFFFFFFF


def augment_generator(seed: int, epoch: int, rank: int = 0) -> torch.Generator:
    """The generator that drives one epoch's augmentation on one process."""
    return torch.Generator().manual_seed(_mix(seed, epoch, rank, 0xA06))


def loader(ds: TensorSet, batch_size: int, sampler: Sampler, num_workers: int = 0,
           generator: torch.Generator | None = None) -> DataLoader:
    """Batches of ``ds`` in ``sampler``'s order; the last partial batch is kept. ``generator``
    (saved in checkpoints) seeds the DataLoader's workers instead of the global RNG."""
    return DataLoader(ds, batch_size=batch_size, sampler=sampler, num_workers=num_workers, collate_fn=_batch,
                      generator=generator, persistent_workers=False)


def write_cifar_folder(path: str, n_train_per_batch: int = 20, n_test: int = 20, seed: int = 0,
                       protocol: int = pickle.DEFAULT_PROTOCOL) -> str:
    """Write a tiny CIFAR-10-format folder (random images) at ``path``: for tests and demos
    (``protocol``: the pickle protocol; the real files are Python 2 protocol-2 pickles)."""
    os.makedirs(path, exist_ok=True)
    rng = np.random.default_rng(seed)

    def dump(name, n):
        d = {b"batch_label": name.encode(), b"labels": rng.integers(0, 10, n).tolist(),
             b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
             b"filenames": [f"{name}_{i}.png".encode() for i in range(n)]}
        with open(os.path.join(path, name), "wb") as f:
            pickle.dump(d, f, protocol=protocol)

    for name in CIFAR_TRAIN_FILES:
        dump(name, n_train_per_batch)
    dump("test_batch", n_test)
    with open(os.path.join(path, "batches.meta"), "wb") as f:
        pickle.dump({b"label_names": [n.encode() for n in ("airplane", "automobile", "bird", "cat", "deer", "dog",
                                                           "frog", "horse", "ship", "truck")],
                     b"num_cases_per_batch": n_train_per_batch, b"num_vis": 3072}, f, protocol=protocol)
    return path
