"""Data sets: digits split, CIFAR-10 pickle loader, synthetic data, augmentation, samplers."""
import os
import pickle

import numpy as np
import pytest
import torch

from model import data


def test_digits_split_is_fixed_stratified_and_independent_of_run_seed():
    a = data.load({"data": "digits", "seed": 1})
    b = data.load({"data": "digits", "seed": 2})
    assert a.in_shape == (1, 8, 8) and a.num_classes == 10
    assert len(a.train) + len(a.test) == 1797
    assert len(a.test) == 360
    assert torch.equal(a.train.x, b.train.x) and torch.equal(a.test.y, b.test.y)
    counts = torch.bincount(a.test.y, minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37           # stratified: ~20% of each class
    assert a.train.x.min() >= -1 and a.train.x.max() <= 1
    # train and test are disjoint (no test image appears in training)
    train_rows = {tuple(r) for r in a.train.x.flatten(1).tolist()}
    dup = sum(tuple(r) in train_rows for r in a.test.x.flatten(1).tolist())
    assert dup < 5                                              # digits has a few exact duplicate images


def test_subsets():
    d = data.load({"data": "digits", "train_subset": 50, "test_subset": 20})
    assert len(d.train) == 50 and len(d.test) == 20


def test_cifar_pickle_loader(cifar_dir):
    d = data.load({"data": "cifar10", "data_dir": cifar_dir})
    assert d.in_shape == (3, 32, 32) and d.num_classes == 10
    assert len(d.train) == 5 * 8 and len(d.test) == 12
    assert d.train.x.shape == (40, 3, 32, 32) and d.train.x.dtype == torch.float32
    assert d.classes[0] == "airplane"
    with open(os.path.join(cifar_dir, "data_batch_1"), "rb") as f:
        raw = pickle.load(f, encoding="bytes")
    img = raw[b"data"][0].reshape(3, 32, 32) / 255.0
    expect = (img - np.array(data.CIFAR_MEAN)[:, None, None]) / np.array(data.CIFAR_STD)[:, None, None]
    assert np.allclose(d.train.x[0].numpy(), expect, atol=1e-5)
    assert d.train.y[0].item() == raw[b"labels"][0]
    assert d.augment.pad == 4 and d.augment.flip


def test_cifar_errors(cifar_dir, tmp_path):
    with pytest.raises(data.DataError, match="does not exist"):
        data.load({"data": "cifar10", "data_dir": str(tmp_path / "nope")})
    with pytest.raises(data.DataError, match="needs --data-dir"):
        data.load({"data": "cifar10", "data_dir": None})
    os.remove(os.path.join(cifar_dir, "data_batch_3"))
    with pytest.raises(data.DataError, match="data_batch_3 is missing"):
        data.load({"data": "cifar10", "data_dir": cifar_dir})
    with open(os.path.join(cifar_dir, "data_batch_3"), "wb") as f:
        f.write(b"not a pickle at all")
    with pytest.raises(data.DataError, match="cannot read"):
        data.load({"data": "cifar10", "data_dir": cifar_dir})
    with open(os.path.join(cifar_dir, "data_batch_3"), "wb") as f:
        pickle.dump({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, f)
    with pytest.raises(data.DataError, match="3072"):
        data.load({"data": "cifar10", "data_dir": cifar_dir})


def test_synthetic_and_unknown():
    d = data.load({"data": "synthetic", "synthetic_shape": [2, 5, 7], "synthetic_size": 40, "seed": 3})
    assert d.train.x.shape == (40, 2, 5, 7) and len(d.test) == 10
    again = data.load({"data": "synthetic", "synthetic_shape": [2, 5, 7], "synthetic_size": 40, "seed": 3})
    assert torch.equal(d.train.x, again.train.x)
    with pytest.raises(data.DataError, match="unknown data set"):
        data.load({"data": "imagenet"})


def test_augment_is_a_shift_and_deterministic():
    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).view(2, 1, 4, 4)
    aug = data.Augment(pad=1, fill=(-1.0,))
    a = aug(x, torch.Generator().manual_seed(5))
    b = aug(x, torch.Generator().manual_seed(5))
    assert torch.equal(a, b) and a.shape == x.shape
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1), value=-1.0)
    for i in range(2):   # every output is some 4x4 window of the padded image
        assert any(torch.equal(a[i], padded[i, :, dy:dy + 4, dx:dx + 4]) for dy in range(3) for dx in range(3))
    flip = data.Augment(flip=True)(x.repeat(32, 1, 1, 1), torch.Generator().manual_seed(0))
    flipped = [torch.equal(f, x[i % 2].flip(2)) for i, f in enumerate(flip)]
    assert 0 < sum(flipped) < 64


def test_epoch_sampler_and_loader():
    s = data.EpochSampler(10, seed=4)
    s.set_epoch(0)
    e0 = list(s)
    assert sorted(e0) == list(range(10)) and list(s) == e0
    s.set_epoch(1)
    assert list(s) != e0
    parts = []
    for r in range(3):
        p = data.EpochSampler(10, seed=4, rank=r, world=3)
        p.set_epoch(0)
        parts.append(list(p))
    assert all(len(p) == 4 for p in parts) and set(sum(parts, [])) == set(range(10))
    d = data.load({"data": "digits", "train_subset": 70})
    batches = list(data.loader(d.train, 32, s))
    assert [len(y) for _, y in batches] == [10]   # the sampler above covers 10 indices
    full = data.EpochSampler(len(d.train), seed=0)
    batches = list(data.loader(d.train, 32, full))
    assert [len(y) for _, y in batches] == [32, 32, 6] and batches[0][0].shape == (32, 1, 8, 8)


# ----------------------------------------------------------------------------- restricted unpickler

class _System:
    """Unpickling this object runs ``os.system(command)`` under a plain ``pickle.load``."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


class _Eval:
    def __init__(self, code):
        self.code = code

    def __reduce__(self):
        import builtins
        return (builtins.eval, (self.code,))


@pytest.mark.parametrize("make, name", [
    (lambda marker: {b"data": _System(f"touch {marker}"), b"labels": [0]}, "system"),
    (lambda marker: _System(f"touch {marker}"), "system"),
    (lambda marker: {b"data": np.zeros((1, 3072), np.uint8),
                     b"labels": [_Eval(f"open({str(marker)!r}, 'w').close() or 0")]}, "eval"),
])
@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_cifar_pickle_that_runs_code_is_refused(cifar_dir, tmp_path, make, name, protocol):
    marker = tmp_path / "pwned"
    with open(os.path.join(cifar_dir, "data_batch_2"), "wb") as f:
        pickle.dump(make(marker), f, protocol=protocol)
    with pytest.raises(data.DataError, match=f"data_batch_2 holds a pickled .*{name}.*refusing") as e:
        data.load({"data": "cifar10", "data_dir": cifar_dir})
    assert "\n" not in str(e.value)
    assert not marker.exists()                           # the command never ran


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_cifar_batches_of_every_pickle_protocol_load(tmp_path, protocol):
    folder = data.write_cifar_folder(str(tmp_path / "c"), n_train_per_batch=3, n_test=4, protocol=protocol)
    d = data.load({"data": "cifar10", "data_dir": folder})
    assert len(d.train) == 15 and len(d.test) == 4 and d.classes[9] == "truck"
    with open(os.path.join(folder, "test_batch"), "rb") as f:
        raw = pickle.load(f, encoding="bytes")
    assert d.test.y.tolist() == raw[b"labels"]


def test_cifar_python2_style_batch_loads(cifar_dir):
    """The real files are Python 2 pickles: str keys/values arrive as bytes, labels as a
    list and the image array through numpy.core.multiarray._reconstruct (NumPy 1 name)."""
    arr = np.arange(2 * 3072, dtype=np.uint8).reshape(2, 3072)
    blob = pickle.dumps({b"batch_label": b"x", b"labels": [3, 9], b"data": arr}, protocol=2)
    blob = blob.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    assert b"numpy.core.multiarray\n_reconstruct" in blob
    with open(os.path.join(cifar_dir, "data_batch_4"), "wb") as f:
        f.write(blob)
    x, y = data._cifar_batch(os.path.join(cifar_dir, "data_batch_4"))
    assert x.shape == (2, 3, 32, 32) and x.dtype == np.uint8 and y.tolist() == [3, 9]
    assert np.array_equal(x.reshape(2, 3072), arr)


@pytest.mark.parametrize("payload, match", [
    ({b"data": np.zeros((2, 3072), np.int64), b"labels": [0, 1]}, "uint8 array of shape"),
    ({b"data": np.zeros((2, 3071), np.uint8), b"labels": [0, 1]}, "uint8 array of shape"),
    ({b"data": np.zeros((2, 3, 1024), np.uint8), b"labels": [0, 1]}, "uint8 array of shape"),
    ({b"data": [[0] * 3072] * 2, b"labels": [0, 1]}, "uint8 array of shape.*got a list"),
    ({b"data": np.zeros((0, 3072), np.uint8), b"labels": []}, "holds no images"),
    ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}, "2 images but 1 labels"),
    ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]}, "labels must lie in 0..9"),
    ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [-1, 0]}, "labels must lie in 0..9"),
    ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1.0]}, "list of integers, found 1.0"),
    ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, True]}, "list of integers, found True"),
    ({b"data": np.zeros((2, 3072), np.uint8), b"labels": np.zeros((2, 1), np.int64)}, "list of integers"),
    ({b"data": np.zeros((2, 3072), np.uint8), b"labels": "01"}, "list of integers, got a str"),
    ({b"labels": [0]}, "needs 'data' and 'labels'"),
    ([1, 2, 3], "expected a dict, got list"),
])
def test_cifar_batch_invariants(cifar_dir, payload, match):
    with open(os.path.join(cifar_dir, "test_batch"), "wb") as f:
        pickle.dump(payload, f)
    with pytest.raises(data.DataError, match=match) as e:
        data.load({"data": "cifar10", "data_dir": cifar_dir})
    assert "\n" not in str(e.value) and "test_batch" in str(e.value)


def test_cifar_labels_as_an_integer_array_and_bad_meta(cifar_dir):
    with open(os.path.join(cifar_dir, "test_batch"), "wb") as f:
        pickle.dump({b"data": np.zeros((3, 3072), np.uint8), b"labels": np.array([1, 2, 3], np.int32)}, f)
    assert data.load({"data": "cifar10", "data_dir": cifar_dir}).test.y.tolist() == [1, 2, 3]
    with open(os.path.join(cifar_dir, "batches.meta"), "wb") as f:
        pickle.dump({b"label_names": [b"a", b"b"]}, f)
    with pytest.raises(data.DataError, match="list of 10 names"):
        data.load({"data": "cifar10", "data_dir": cifar_dir})
