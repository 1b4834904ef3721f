import numpy as np
import pandas as pd
import pytest

from common_blocks.data import rle


def test_round_trip_on_every_real_mask(real_sample):
    labels = pd.read_csv(real_sample / "train.csv")
    for encoded in labels["EncodedPixels"]:
        mask = rle.decode(encoded)
        assert mask.dtype == np.uint8 and mask.shape == (256, 1600)
        assert rle.encode(mask) == encoded
        assert rle.area(encoded) == int(mask.sum())


def _numpy_encode(mask: np.ndarray) -> str:
    pixels = np.concatenate([[0], mask.T.flatten(), [0]])
    runs = np.where(pixels[1:] != pixels[:-1])[0] + 1
    runs[1::2] -= runs[::2]
    return " ".join(map(str, runs))


@pytest.mark.parametrize("density", [0.0, 0.01, 0.5, 0.99, 1.0])
def test_round_trip_random_masks(density):
    rng = np.random.default_rng(int(density * 100))
    mask = (rng.random((256, 1600)) < density).astype(np.uint8)
    encoded = rle.encode(mask)
    assert encoded == _numpy_encode(mask)
    np.testing.assert_array_equal(rle.decode(encoded), mask)


def test_edge_cases():
    shape = (256, 1600)
    assert rle.encode(np.zeros(shape, np.uint8)) == ""
    assert rle.decode("").sum() == 0
    assert rle.encode(np.ones(shape, np.uint8)) == "1 409600"
    first = np.zeros(shape, np.uint8)
    first[0, 0] = 1
    assert rle.encode(first) == "1 1"
    last = np.zeros(shape, np.uint8)
    last[-1, -1] = 1
    assert rle.encode(last) == "409600 1"
    one = np.zeros(shape, np.uint8)
    one[3, 2] = 1  # column-major: pixel 2 * 256 + 3 + 1
    assert rle.encode(one) == "516 1"
    np.testing.assert_array_equal(rle.decode("516 1"), one)
    # a run crossing a column boundary continues at the top of the next column
    assert rle.decode("256 2")[[255, 0], [0, 1]].tolist() == [1, 1]


def test_encode_accepts_bool_and_rejects_wrong_rank():
    mask = np.zeros((4, 3), bool)
    mask[1, 1] = True
    assert rle.encode(mask) == "6 1"
    with pytest.raises(ValueError, match="HxW"):
        rle.encode(np.zeros((2, 4, 3), np.uint8))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("1 2 3", "odd number"),
        ("1 x", "not a non-negative integer"),
        ("1.5 2", "not a non-negative integer"),
        ("1 -2", "not a non-negative integer"),
        ("1 0", "zero length"),
        ("0 3", "start 0"),
        ("409600 2", "beyond"),
        ("99999999999999999999 1", "beyond"),
        ("10 2 5 1", "starts before the previous run ends"),
        ("10 5 12 1", "starts before the previous run ends"),
    ],
)
def test_invalid_strings_raise(text, message):
    with pytest.raises(ValueError, match=message):
        rle.decode(text)
    with pytest.raises(ValueError, match=message):
        rle.check(text)


def test_custom_shape():
    mask = np.array([[1, 0, 1], [1, 0, 0]], np.uint8)
    assert rle.encode(mask) == "1 2 5 1"
    np.testing.assert_array_equal(rle.decode("1 2 5 1", shape=(2, 3)), mask)
    with pytest.raises(ValueError, match="2x3"):
        rle.decode("6 2", shape=(2, 3))


@pytest.mark.parametrize("order", ["C", "F"])
@pytest.mark.parametrize("shape", [(256, 1600), (5, 7), (9, 3)])
def test_encode_handles_both_memory_layouts_and_nonbinary_values(order, shape):
    rng = np.random.default_rng(1)
    for density in (0.0, 0.02, 0.6, 1.0):
        mask = (rng.random(shape) < density).astype(np.uint8)
        scaled = np.asarray(mask * 255, order=order)  # cv2-style 0/255 masks count as defects too
        assert rle.encode(scaled) == _numpy_encode(mask)
        assert rle.encode(np.asarray(mask, order=order, dtype=bool)) == _numpy_encode(mask)
