"""Synthetic Severstal-like data set, so the whole pipeline can run and be tested without the Kaggle data.

Writes the Kaggle layout (``train_images/``, ``train.csv``, ``test_images/``, ``sample_submission.csv``)
plus ``test_labels.csv`` with the true labels of the test images, so a demo can score its submission,
and with ``n_weak`` a weakly labelled pool as the real sample has one: ``weak_images/`` and
``weak_labels.csv`` (which classes each image holds, no masks).
Images are grey steel-like texture (rolling streaks, slow brightness variation, fine noise) with four
kinds of painted defects; each class mask is exactly the set of pixels painted for that class, so a
model can learn the masks. Every image is drawn from its own generator seeded by (seed, split, index),
which makes the output identical for any number of workers.

Usage: ``severstal synthetic --out DIR --n-train N --n-test M [--n-weak K] --seed S [--overwrite]``
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from tqdm import tqdm

from common_blocks.data.formats import (
    N_CLASSES,
    PRESENCE_COLUMNS,
    RLE_COLUMNS,
    class_presence,
    empty_table,
    write_labels,
    write_submission,
    write_weak_labels,
)
from common_blocks.data.rle import IMAGE_SHAPE, encode
from common_blocks.errors import DataError
from common_blocks.files import OutputError, check_output_dir, check_output_file
from common_blocks.output_folders import is_marked, staged_folder

HEIGHT, WIDTH = IMAGE_SHAPE
SPLITS = ("train", "test", "weak")
JPEG_QUALITY = 90

# Purposes of the random streams, so that no two streams share a seed.
_IMAGE_STREAM, _PLAN_STREAM, _ID_STREAM = 0, 1, 2
_ID_SPACE = 16**9  # Kaggle ids are 9 hex digits.

# Every block of 20 consecutive images of a split holds 10 defect-free images (0) and 10 with these main
# classes, in a seeded order: about half the images are clean, class 3 dominates and class 2 is rarest as
# in the competition, and even a 20-image set holds all four classes.
_BLOCK_MAIN_CLASSES = (0,) * 10 + (3, 3, 3, 3, 3, 3, 1, 1, 4, 2)
_SECOND_CLASS_PROBABILITY = 0.13
_SECOND_CLASS_WEIGHTS = np.array([0.3, 0.1, 0.4, 0.2])  # classes 1..4, for images with two classes
_PAINT_ORDER = (4, 3, 1, 2)  # largest defects first, so that they still find a free spot
_SHEET_EDGE_PROBABILITY = 0.15  # images showing the dark background beside the edge of the sheet
_EDGE_RAMP = 6  # columns over which steel fades into the background
_MAX_BACKGROUND_WIDTH = 480  # leaves more than 1100 columns of steel, wider than the widest defect (900)
_PLACEMENT_TRIES = 30
_DEFECT_GAP = 8  # pixels kept between defects of different classes


def _rng(seed: int, stream: int, split: int, number: int) -> np.random.Generator:
    return np.random.default_rng([seed, stream, split, number])


def _steel_texture(rng: np.random.Generator) -> np.ndarray:
    """Grey float image: base level, slow brightness variation and horizontal rolling streaks."""
    image = np.full(IMAGE_SHAPE, rng.uniform(75.0, 130.0), dtype=np.float32)
    slow = rng.standard_normal((int(rng.integers(3, 6)), int(rng.integers(12, 25))), dtype=np.float32)
    image += rng.uniform(4.0, 14.0) * cv2.resize(slow, (WIDTH, HEIGHT), interpolation=cv2.INTER_CUBIC)
    streaks = rng.standard_normal((HEIGHT, int(rng.integers(12, 40))), dtype=np.float32)
    image += rng.uniform(3.0, 7.0) * cv2.resize(streaks, (WIDTH, HEIGHT), interpolation=cv2.INTER_LINEAR)
    image += rng.uniform(1.5, 4.0) * rng.standard_normal((HEIGHT, 1), dtype=np.float32)
    return image


def _add_sheet_edge(rng: np.random.Generator, image: np.ndarray) -> tuple[int, int]:
    """Darken one side as if the sheet ended there; return the columns [first, last) of clean steel."""
    if rng.random() >= _SHEET_EDGE_PROBABILITY:
        return 0, WIDTH
    background_width = int(rng.integers(80, _MAX_BACKGROUND_WIDTH + 1))
    steel_weight = np.clip((np.arange(WIDTH, dtype=np.float32) - background_width) / _EDGE_RAMP, 0.0, 1.0)
    left_side = rng.random() < 0.5
    if not left_side:
        steel_weight = steel_weight[::-1]
    background = rng.uniform(8.0, 30.0)
    image *= steel_weight
    image += background * (1.0 - steel_weight)
    margin = background_width + _EDGE_RAMP
    return (margin, WIDTH) if left_side else (0, WIDTH - margin)


def _signed_strength(rng: np.random.Generator, low: float, high: float, dark_probability: float) -> float:
    strength = rng.uniform(low, high)
    return -strength if rng.random() < dark_probability else strength


def _pit_cluster(rng: np.random.Generator) -> np.ndarray:
    """Class 1: a cluster of small dark pits."""
    height, width = int(rng.integers(24, 81)), int(rng.integers(30, 141))
    patch = np.zeros((height, width), dtype=np.float32)
    for _ in range(int(rng.integers(6, 31))):
        centre = (int(rng.integers(4, width - 4)), int(rng.integers(4, height - 4)))
        axes = (int(rng.integers(1, 4)), int(rng.integers(1, 4)))
        depth = -rng.uniform(35.0, 75.0)
        cv2.ellipse(patch, centre, axes, rng.uniform(0.0, 180.0), 0, 360, depth, thickness=-1)
    return patch


def _vertical_scratches(rng: np.random.Generator) -> np.ndarray:
    """Class 2: a few short, thin, nearly vertical scratches."""
    height, width = int(rng.integers(30, 91)), int(rng.integers(12, 71))
    patch = np.zeros((height, width), dtype=np.float32)
    for _ in range(int(rng.integers(2, 6))):
        length = int(rng.integers(height // 2, height + 1))
        top = int(rng.integers(0, height - length + 1))
        x_top = int(rng.integers(2, width - 2))
        x_bottom = int(np.clip(x_top + rng.uniform(-0.2, 0.2) * length, 1, width - 2))
        strength = _signed_strength(rng, 40.0, 70.0, dark_probability=0.7)
        thickness = int(rng.integers(1, 3))
        cv2.line(patch, (x_top, top), (x_bottom, top + length - 1), strength, thickness, cv2.LINE_8)
    return patch


def _horizontal_scratch(rng: np.random.Generator) -> np.ndarray:
    """Class 3, first kind: a long, thin, slightly bent scratch along the rolling direction."""
    length = int(rng.integers(250, 901))
    thickness = int(rng.integers(1, 4))
    xs = np.linspace(1, length - 2, 6)
    ys = np.tan(rng.uniform(-0.07, 0.07)) * xs + rng.uniform(-3.0, 3.0, size=xs.size)
    ys += thickness + 1 - ys.min()
    patch = np.zeros((int(np.ceil(ys.max())) + thickness + 2, length), dtype=np.float32)
    points = np.round(np.stack([xs, ys], axis=1)).astype(np.int32).reshape(-1, 1, 2)
    strength = _signed_strength(rng, 35.0, 60.0, dark_probability=0.7)
    cv2.polylines(patch, [points], False, strength, thickness, cv2.LINE_8)
    return patch


def _rolled_in_patch(rng: np.random.Generator) -> np.ndarray:
    """Class 3, second kind: an elongated bright or dark patch with ragged edges and inner streaks."""
    height, width = int(rng.integers(8, 29)), int(rng.integers(80, 351))
    rows = np.linspace(-1.0, 1.0, height, dtype=np.float32)[:, None]
    cols = np.linspace(-1.0, 1.0, width, dtype=np.float32)[None, :]
    ragged = rng.uniform(-0.35, 0.35, size=(3, max(2, width // 20))).astype(np.float32)
    field = 1.0 - rows**2 - cols**2 + cv2.resize(ragged, (width, height), interpolation=cv2.INTER_LINEAR)
    streaks = rng.uniform(0.0, 1.0, size=(height, 6)).astype(np.float32)
    streaks = cv2.resize(streaks, (width, height), interpolation=cv2.INTER_LINEAR)
    strength = _signed_strength(rng, 32.0, 55.0, dark_probability=0.5)
    return np.where(field > 0.25, strength * (0.75 + 0.25 * streaks), 0.0).astype(np.float32)


def _blotch(rng: np.random.Generator) -> np.ndarray:
    """Class 4: a large, irregular dark blotch, darkest in its middle."""
    height, width = int(rng.integers(60, 201)), int(rng.integers(80, 301))
    rows = np.linspace(-1.0, 1.0, height, dtype=np.float32)[:, None]
    cols = np.linspace(-1.0, 1.0, width, dtype=np.float32)[None, :]
    ragged = rng.uniform(-0.45, 0.45, size=(5, 6)).astype(np.float32)
    field = 1.0 - rows**2 - cols**2 + cv2.resize(ragged, (width, height), interpolation=cv2.INTER_LINEAR)
    depth = rng.uniform(50.0, 90.0) * (0.65 + 0.35 * np.clip(field, 0.0, 1.0))
    return np.where(field > 0.35, -depth, 0.0).astype(np.float32)


def _defect_shapes(rng: np.random.Generator, class_id: int) -> list[np.ndarray]:
    """Intensity changes of one to a few defects of a class; nonzero pixels are the painted ones."""
    if class_id == 1:
        return [_pit_cluster(rng) for _ in range(int(rng.integers(1, 4)))]
    if class_id == 2:
        return [_vertical_scratches(rng) for _ in range(int(rng.integers(1, 3)))]
    if class_id == 3:
        makers = [
            _horizontal_scratch if rng.random() < 0.6 else _rolled_in_patch for _ in range(rng.integers(1, 3))
        ]
        return [make(rng) for make in makers]
    return [_blotch(rng) for _ in range(2 if rng.random() < 0.25 else 1)]


def _find_spot(
    rng: np.random.Generator,
    shape: tuple[int, int],
    steel: tuple[int, int],
    others: Sequence[tuple[int, int, int, int]],
) -> tuple[int, int]:
    """Top-left corner inside the steel, away from defects of other classes whenever a free spot is found.

    If none is found in a few tries the last one is used: masks may then overlap, which stays correct
    because a pixel painted for two classes is in both masks.
    """
    height, width = shape
    for _ in range(_PLACEMENT_TRIES):
        top = int(rng.integers(0, HEIGHT - height + 1))
        left = int(rng.integers(steel[0], steel[1] - width + 1))
        if not any(
            top < bottom + _DEFECT_GAP
            and other_top < top + height + _DEFECT_GAP
            and left < right + _DEFECT_GAP
            and other_left < left + width + _DEFECT_GAP
            for other_top, other_left, bottom, right in others
        ):
            break
    return top, left


def random_classes(rng: np.random.Generator) -> tuple[int, ...]:
    """Defect classes of a random image, with the same distribution as a generated data set."""
    return _with_second_class(rng, int(rng.choice(_BLOCK_MAIN_CLASSES)))


def _with_second_class(rng: np.random.Generator, main_class: int) -> tuple[int, ...]:
    if main_class == 0:
        return ()
    if rng.random() >= _SECOND_CLASS_PROBABILITY:
        return (main_class,)
    weights = _SECOND_CLASS_WEIGHTS.copy()
    weights[main_class - 1] = 0.0
    second = int(rng.choice(N_CLASSES, p=weights / weights.sum())) + 1
    return tuple(sorted((main_class, second)))


def make_sample(
    rng: np.random.Generator, classes: Iterable[int] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Draw one image and its masks: (HxWx3 uint8 grey image, 4xHxW uint8 0/1 masks of classes 1..4).

    ``classes`` picks the defect classes to paint (empty: a defect-free image); by default they are
    drawn like those of a generated data set.
    """
    wanted = set(random_classes(rng) if classes is None else classes)
    if not wanted <= {1, 2, 3, 4}:
        raise ValueError(f"defect classes must be among 1..4, got {sorted(wanted)}")
    image = _steel_texture(rng)
    steel = _add_sheet_edge(rng, image)
    masks = np.zeros((N_CLASSES, *IMAGE_SHAPE), dtype=np.uint8)
    boxes: dict[int, list[tuple[int, int, int, int]]] = {class_id: [] for class_id in wanted}
    for class_id in (class_id for class_id in _PAINT_ORDER if class_id in wanted):
        for shape in _defect_shapes(rng, class_id):
            others = [box for other, class_boxes in boxes.items() if other != class_id for box in class_boxes]
            top, left = _find_spot(rng, shape.shape, steel, others)
            bottom, right = top + shape.shape[0], left + shape.shape[1]
            image[top:bottom, left:right] += shape
            masks[class_id - 1, top:bottom, left:right] |= shape != 0
            boxes[class_id].append((top, left, bottom, right))
    image += rng.uniform(2.0, 4.0) * rng.standard_normal(IMAGE_SHAPE, dtype=np.float32)
    grey = np.clip(image, 0.0, 255.0).astype(np.uint8)
    return cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR), masks


def render_sample(seed: int, split: str, index: int) -> tuple[np.ndarray, np.ndarray]:
    """The image and masks that ``generate`` writes as image ``index`` of ``split`` for ``seed``."""
    split_number = SPLITS.index(split)
    block, position = divmod(index, len(_BLOCK_MAIN_CLASSES))
    main_classes = _rng(seed, _PLAN_STREAM, split_number, block).permutation(_BLOCK_MAIN_CLASSES)
    rng = _rng(seed, _IMAGE_STREAM, split_number, index)
    return make_sample(rng, _with_second_class(rng, int(main_classes[position])))


def image_ids(seed: int, n_train: int, n_test: int) -> tuple[list[str], list[str]]:
    """Distinct Kaggle-style ids (9 hex digits + ``.jpg``) of the train and the test images."""
    numbers = _rng(seed, _ID_STREAM, 0, 0).choice(_ID_SPACE, size=n_train + n_test, replace=False)
    ids = [f"{number:09x}.jpg" for number in numbers]
    return ids[:n_train], ids[n_train:]


def weak_image_ids(seed: int, n_weak: int, taken: Iterable[str]) -> list[str]:
    """Ids of the weakly labelled images, none of ``taken``, from their own stream: adding a weak pool
    leaves the train and test images of a seed as they were."""
    taken = set(taken)
    numbers = _rng(seed, _ID_STREAM, SPLITS.index("weak"), 0).choice(
        _ID_SPACE, size=n_weak + len(taken), replace=False
    )
    return [name for name in (f"{number:09x}.jpg" for number in numbers) if name not in taken][:n_weak]


def _write_sample(task: tuple[int, str, int, str, Path]) -> tuple[str, list[str]]:
    """Render one image, write its JPEG and return its id with the RLE of each class."""
    seed, split, index, image_id, path = task
    image, masks = render_sample(seed, split, index)
    if not cv2.imwrite(str(path), image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]):
        raise OutputError(f"{path}: could not write the image (full disk? unwritable folder?)")
    return image_id, [encode(mask) for mask in masks]


LABEL_FILES = ("train.csv", "test_labels.csv", "sample_submission.csv", "weak_labels.csv")
# The mark of a data set this generator wrote: ``--overwrite`` replaces only a folder that has it, so a
# real data set (whose images and train.csv it would delete) is never taken for an earlier synthetic one.
MARKER = "severstal-synthetic.json"
MARKER_FORMAT = "severstal-synthetic/1"


def _check_out_dir(out_dir: Path, overwrite: bool) -> None:
    """Refuse to mix with an earlier data set unless told to replace it, and a folder that cannot be
    written, before any image is drawn."""
    if out_dir.exists() and not out_dir.is_dir():
        raise DataError(f"{out_dir} exists and is not a folder")
    check_output_dir(out_dir, "the data set folder")
    for split in SPLITS:
        image_dir = out_dir / f"{split}_images"
        check_output_dir(image_dir, "an image folder of the data set")
        if image_dir.is_dir() and any(image_dir.iterdir()):
            if not overwrite:
                raise DataError(f"{image_dir} is not empty; pass --overwrite to replace the data set there")
            if not is_marked(out_dir, MARKER, MARKER_FORMAT):
                raise DataError(
                    f"{out_dir}: holds images but is not a synthetic data set this generator wrote (no "
                    f"{MARKER}), so --overwrite leaves it alone; write the synthetic set elsewhere, or remove the folder "
                    "yourself"
                )
    for name in LABEL_FILES:
        check_output_file(out_dir / name, "a label file of the data set")


def _remove_stale_images(out_dir: Path, kept: dict[str, list[str]]) -> None:
    """Delete the ``*.jpg`` of an earlier data set that the new one does not have (``kept``: the image
    ids of each split), and an earlier weak pool's labels (first) when the new set has none."""
    stale = [] if kept["weak"] else [out_dir / "weak_labels.csv"]
    for split, ids in kept.items():
        new = set(ids)
        stale += [image for image in (out_dir / f"{split}_images").glob("*.jpg") if image.name not in new]
    for path in stale:
        try:
            path.unlink(missing_ok=True)
        except OSError as error:
            raise OutputError(f"{path}: cannot remove the earlier file ({error.strerror})") from None


def generate(
    out_dir: Path,
    n_train: int,
    n_test: int,
    seed: int,
    workers: int = 2,
    overwrite: bool = False,
    n_weak: int = 0,
) -> None:
    """Write a synthetic data set in the Kaggle layout into ``out_dir``, identical for any ``workers``;
    with ``n_weak`` > 0 also a weak pool (``weak_images/``, ``weak_labels.csv``).

    The data set is written into a staging folder beside ``out_dir`` and moved in, label files last,
    only once all of it is written: a failure (a full disk, Ctrl-C) leaves ``out_dir`` as it was. With
    ``overwrite`` the ``*.jpg`` files of an earlier data set in ``out_dir`` that the new one does not
    have are deleted then (and its weak labels when the new one has no weak pool), so that no stale
    image is left without a label row.
    """
    if n_train < 0 or n_test < 0 or n_weak < 0 or workers < 1:
        raise ValueError(
            f"need n_train, n_test, n_weak >= 0 and workers >= 1, got {n_train}, {n_test}, {n_weak}, {workers}"
        )
    out_dir = Path(out_dir)
    _check_out_dir(out_dir, overwrite)
    train_ids, test_ids = image_ids(seed, n_train, n_test)
    ids = {"train": train_ids, "test": test_ids, "weak": weak_image_ids(seed, n_weak, train_ids + test_ids)}
    with staged_folder(out_dir, "the data set folder", last=(*LABEL_FILES, MARKER)) as staging:
        _write_data_set(staging, seed, ids, workers)
        marker = {
            "format": MARKER_FORMAT,
            "seed": seed,
            "n_train": n_train,
            "n_test": n_test,
            "n_weak": n_weak,
        }
        (staging / MARKER).write_text(json.dumps(marker) + "\n")
    _remove_stale_images(out_dir, ids)


def _write_data_set(out_dir: Path, seed: int, ids: dict[str, list[str]], workers: int) -> None:
    """The images of every split (a weak pool only when it has images) and their label files."""
    splits = [split for split in SPLITS if split != "weak" or ids[split]]
    for split in splits:
        (out_dir / f"{split}_images").mkdir()
    tasks = [
        (seed, split, index, image_id, out_dir / f"{split}_images" / image_id)
        for split in splits
        for index, image_id in enumerate(ids[split])
    ]
    # Threads, not processes: the work is in cv2, numpy and numba code that releases the GIL, so two threads
    # nearly double the speed, and forking a process that holds cv2's thread pool can deadlock the child.
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(tqdm(pool.map(_write_sample, tasks), total=len(tasks), unit="img", disable=None))
    rles = dict(results)
    tables = {
        split: pd.DataFrame(
            [[image_id, *rles[image_id]] for image_id in ids[split]], columns=["ImageId", *RLE_COLUMNS]
        )
        for split in splits
    }
    write_labels(tables["train"], out_dir / "train.csv")
    write_labels(tables["test"], out_dir / "test_labels.csv")
    write_submission(empty_table(ids["test"]), out_dir / "sample_submission.csv")
    if "weak" in tables:
        presence = pd.DataFrame(class_presence(tables["weak"]), columns=list(PRESENCE_COLUMNS))
        write_weak_labels(presence.assign(ImageId=ids["weak"]), out_dir / "weak_labels.csv")
