import pytest

from common_blocks.config_io import apply_overrides
from common_blocks.errors import ConfigError
from common_blocks.training.config import TrainConfig, load_config
from tests.repository import CONFIGS

CONFIG_FILES = sorted(CONFIGS.glob("*.yaml"))
TRAIN_CONFIGS = [path for path in CONFIG_FILES if not path.stem.startswith("ensemble")]


@pytest.mark.parametrize("path", TRAIN_CONFIGS, ids=lambda p: p.stem)
def test_every_shipped_training_config_validates(path):
    cfg = load_config(path)
    assert cfg.name == path.stem
    assert TrainConfig.model_validate(cfg.model_dump(mode="json")) == cfg


def test_overrides_are_read_as_yaml(debug_config):
    cfg = load_config(
        debug_config, ["trainer.max_epochs=7", "data.grayscale=true", "model.args.encoder_depth=4"]
    )
    assert cfg.trainer.max_epochs == 7 and cfg.data.grayscale is True
    assert cfg.model.args["encoder_depth"] == 4


@pytest.mark.parametrize(
    ("value", "ours"),
    [("32", "fp32"), ('"32"', "fp32"), ("bf16-mixed", "bf16"), ("16-mixed", "fp16"), ("bf16", "bf16")],
)
def test_precision_reads_lightning_spellings_as_the_command_lines(debug_config, value, ours):
    """Earlier configs and checkpoints say ``32`` or ``bf16-mixed``: they load, in the one vocabulary."""
    assert load_config(debug_config, [f"trainer.precision={value}"]).trainer.precision == ours


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["data.batch_sise=3"], "unknown key data.batch_sise"),
        (["trainer.max_epochs=many"], "trainer.max_epochs: Input should be a valid integer"),
        (["mode=semantic"], "mode: Input should be 'multilabel', 'binary' or 'multiclass'"),
        (["loss=[]"], "loss needs at least one term"),
        (["data.scale=2"], "data.scale: Input should be less than or equal to 1"),
        (["trainer.max_epochs.x=1"], "trainer.max_epochs is not a section"),
        (["max_epochs"], "expected key.path=value"),
        (
            ["trainer.precision=16"],
            "trainer.precision: Input should be 'auto', 'fp32', 'fp16' or 'bf16'",
        ),
        (["data.grayscale=true", "model.args.in_channels=3"], "model.args.in_channels must be 1"),
        (["class_head={loss_weight: 0}"], "class_head.loss_weight: Input should be greater than 0"),
        (["class_head={pooling: mean}"], "class_head.pooling: Input should be 'avg' or 'max'"),
        (
            ["task=classification", "model.type=Classifier", "loss=[{type: bce}]", "class_head={}"],
            "class_head: a head on a segmenter",
        ),
        (["model.args.class_head={}"], "model.args.class_head: the class head is the pipeline's own key"),
        (["model.args.class_head={loss_weight: 0.2}"], "set it at the top level"),
        (["model.type=Nope"], "model.type: Input should be 'FPN', 'Unet' or 'Classifier' (got 'Nope')"),
        (
            ["loss=[{type: dise}]"],
            "loss.0.type: Input should be 'bce', 'soft_bce', 'focal', 'dice' or 'lovasz'",
        ),
        (["optimizer.type=sgd"], "optimizer.type: Input should be 'adam', 'adamw' or 'radam'"),
        (
            ["task=classification"],
            "model.type: Unet is a segmentation network, not one for task 'classification'",
        ),
        (
            ["task=classification", "model.type=Classifier", "loss=[{type: bce}, {type: lovasz}]"],
            "loss.1.type: loss 'lovasz' does not support mode 'classification' (it supports multilabel, binary, "
            "multiclass)",
        ),
        (["model.type=Classifier"], "model.type: Classifier is a classification network, not one for task"),
    ],
)
def test_bad_values_name_the_key_path(debug_config, overrides, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_config(debug_config, overrides)


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="broken.yaml, line 2: not valid YAML"):
        load_config(broken)
    listing = tmp_path / "list.yaml"
    listing.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(listing)
    no_model = tmp_path / "no_model.yaml"
    no_model.write_text("task: segmentation\n")
    with pytest.raises(ConfigError, match="missing key model"):
        load_config(no_model)


def test_resolved_config_round_trips_and_digest_tracks_changes(debug_config):
    cfg = load_config(debug_config)
    again = TrainConfig.model_validate(apply_overrides(cfg.model_dump(mode="json"), []))
    assert again == cfg and again.digest() == cfg.digest()
    assert load_config(debug_config, ["trainer.seed=1"]).digest() != cfg.digest()


@pytest.mark.parametrize("path", TRAIN_CONFIGS, ids=lambda p: p.stem)
def test_every_shipped_config_builds_its_model(path):
    from common_blocks.training.module import DefectModule

    cfg = load_config(path, ["model.args.encoder_weights=null"])
    module = DefectModule(cfg.model_dump(mode="json"))
    assert sum(p.numel() for p in module.parameters()) > 0


def test_grayscale_data_builds_a_one_channel_model(debug_config):
    import torch

    from common_blocks.training.module import DefectModule

    cfg = load_config(debug_config, ["data.grayscale=true"])
    module = DefectModule(cfg.model_dump(mode="json"))
    assert module(torch.zeros(1, 1, 64, 128)).shape == (1, 4, 64, 128)


@pytest.mark.parametrize(
    "path", [p for p in TRAIN_CONFIGS if load_config(p).parent_stage is not None], ids=lambda p: p.stem
)
def test_a_shipped_later_stage_takes_the_weights_of_its_earlier_stage(path):
    """The staged recipe's stages build the same network, so ``init_from`` loads strictly."""
    from common_blocks.training.module import DefectModule

    later = load_config(path, ["model.args.encoder_weights=null"])
    earlier = load_config(later.parent_stage, ["model.args.encoder_weights=null"])
    weights = DefectModule(earlier.model_dump(mode="json")).state_dict()
    DefectModule(later.model_dump(mode="json")).load_state_dict(weights)  # strict: raises on a mismatch
