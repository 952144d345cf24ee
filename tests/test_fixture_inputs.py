"""The trained fixture's 360 held-out digits as integer arrays (tests/fixtures/test_inputs.npy,
test_labels.npy, written by tests/fixtures/make_test_inputs.py): what hw/ and sim/ replay
without the training code."""
from pathlib import Path

import numpy as np

from artifact import check_input_array, golden, int_range, load_artifact

FIXTURES = Path(__file__).parent / "fixtures"


def test_fixture_test_set_is_integer_and_reproduces_the_recorded_accuracy():
    art = load_artifact(FIXTURES / "resnet20_digits")
    x = np.load(FIXTURES / "test_inputs.npy", allow_pickle=False)
    y = np.load(FIXTURES / "test_labels.npy", allow_pickle=False)
    spec = art.manifest["input"]
    assert spec == {"shape": [1, 8, 8], "bits": 8, "signed": True, "exponent": -7}
    assert x.dtype == np.int8 and x.shape == (360, *spec["shape"])
    assert y.dtype == np.int64 and y.shape == (360,)
    check_input_array(art.manifest, x, "test_inputs.npy")
    lo, hi = int_range(spec["bits"], spec["signed"])
    assert x.min() == lo and x.max() == hi          # the digits' black and white pixels (-1 and 1 clamped)
    assert np.bincount(y).tolist() == [36, 36, 35, 37, 36, 37, 36, 36, 35, 36]   # stratified 20 % of 1,797
    correct = int((golden.run(art, x).argmax(1) == y).sum())
    assert correct == 356
    assert correct / len(y) == art.manifest["model"]["test_acc"]
