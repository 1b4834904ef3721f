"""Loss terms per mode, their weighted sum, and the mode-specific targets and probabilities."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError

from common_blocks.data.formats import N_CLASSES
from common_blocks.errors import ConfigError
from common_blocks.training.config_sections import (
    CLASSIFICATION_MODE,
    LOSS_MODES,
    SEGMENTATION_MODES,
    LossTerm,
)
from common_blocks.training.losses import LOSSES, build_loss, check_class_weights, targets_for_mode
from common_blocks.training.modes import (
    num_outputs_for_mode,
    probabilities,
)

SUPPORTED = [(name, mode) for name, modes in LOSS_MODES.items() for mode in modes]


def test_every_named_loss_has_its_builder() -> None:
    assert list(LOSSES) == list(LOSS_MODES)


@pytest.fixture
def mask() -> torch.Tensor:
    """(2, 4, 16, 24) masks of 0/1, classes overlapping in places, one class absent."""
    generator = torch.Generator().manual_seed(0)
    mask = (torch.rand(2, N_CLASSES, 16, 24, generator=generator) > 0.7).float()
    mask[:, 1] = 0
    return mask


def perfect_logits(target: torch.Tensor, mode: str) -> torch.Tensor:
    """Large-magnitude logits whose prediction is ``target``."""
    if mode == "multiclass":
        return F.one_hot(target, num_outputs_for_mode(mode)).permute(0, 3, 1, 2).float() * 40 - 20
    return target * 40 - 20


@pytest.mark.parametrize(("name", "mode"), SUPPORTED)
def test_each_loss_gives_a_finite_scalar_and_gradient(name: str, mode: str, mask: torch.Tensor) -> None:
    target = targets_for_mode(mask, mode)
    spatial = mask.shape[2:] if mode in SEGMENTATION_MODES else ()
    logits = torch.randn(mask.shape[0], num_outputs_for_mode(mode), *spatial, requires_grad=True)
    loss = build_loss([LossTerm(type=name)], mode)(logits, target)
    loss.backward()
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


@pytest.mark.parametrize("name", ["dice", "lovasz"])
@pytest.mark.parametrize("mode", SEGMENTATION_MODES)
def test_perfect_prediction_gives_near_zero_overlap_loss(name: str, mode: str, mask: torch.Tensor) -> None:
    target = targets_for_mode(mask, mode)
    loss = build_loss([LossTerm(type=name)], mode)(perfect_logits(target, mode), target)
    assert loss.item() == pytest.approx(0.0, abs=1e-4)


def test_total_is_the_weighted_sum_of_the_logged_terms(mask: torch.Tensor) -> None:
    terms = [LossTerm(type="bce", weight=2.0), LossTerm(type="dice", weight=0.5)]
    loss = build_loss(terms, "multilabel")
    total = loss(torch.randn(mask.shape), mask)
    assert set(loss.last_terms) == {"bce", "dice"}
    assert total.item() == pytest.approx(
        2.0 * loss.last_terms["bce"].item() + 0.5 * loss.last_terms["dice"].item()
    )


def test_repeated_term_types_get_distinct_names(mask: torch.Tensor) -> None:
    terms = [LossTerm(type="dice"), LossTerm(type="bce"), LossTerm(type="dice", args={"log_loss": True})]
    loss = build_loss(terms, "multilabel")
    loss(torch.randn(mask.shape), mask)
    assert list(loss.last_terms) == ["dice", "bce", "dice_3"]


def test_targets_have_the_shape_and_type_of_each_mode(mask: torch.Tensor) -> None:
    batch, classes, height, width = mask.shape
    assert targets_for_mode(mask, "multilabel") is mask
    assert targets_for_mode(mask, "binary").shape == (batch, 1, height, width)
    multiclass = targets_for_mode(mask, "multiclass")
    assert multiclass.shape == (batch, height, width) and multiclass.dtype == torch.long
    assert targets_for_mode(mask, CLASSIFICATION_MODE).tolist() == [[1.0, 0.0, 1.0, 1.0]] * batch


def test_multiclass_target_gives_overlaps_to_the_higher_class() -> None:
    mask = torch.zeros(1, N_CLASSES, 1, 3)
    mask[0, 0, 0, :2] = 1  # class 1 at pixels 0 and 1
    mask[0, 2, 0, 1] = 1  # class 3 at pixel 1
    assert targets_for_mode(mask, "multiclass").tolist() == [[[1, 3, 0]]]
    assert targets_for_mode(mask, "binary").flatten().tolist() == [1.0, 1.0, 0.0]


SURE = 1 / (1 + math.exp(-10))  # sigmoid(10)


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("multilabel", [0.5, 0.5, 0.5, SURE]),  # one sigmoid per class
        ("classification", [0.5, 0.5, 0.5, SURE]),
        ("binary", [SURE] * 4),  # the one defect channel, shared by every class
        # softmax over background + 4 classes, the background dropped
        ("multiclass", [1 / (4 + math.exp(10))] * 3 + [math.exp(10) / (4 + math.exp(10))]),
    ],
)
def test_probabilities_of_each_mode(mode: str, expected: list[float]) -> None:
    """Zero logits but a 10 in the last channel: the probabilities each mode's activation gives."""
    spatial = (8, 12) if mode in SEGMENTATION_MODES else ()
    logits = torch.zeros(2, num_outputs_for_mode(mode), *spatial)
    logits[:, -1] = 10.0
    probability = probabilities(logits, mode)
    assert probability.shape == (2, N_CLASSES, *spatial)
    per_class = probability.reshape(2, N_CLASSES, -1)
    assert torch.allclose(per_class, torch.tensor(expected)[None, :, None].expand_as(per_class), atol=1e-7)


def test_binary_probability_is_shared_by_all_classes() -> None:
    probability = probabilities(torch.randn(2, 1, 8, 12), "binary")
    assert torch.equal(probability, probability[:, :1].expand_as(probability))


def test_multiclass_probabilities_leave_out_the_background() -> None:
    logits = torch.randn(2, N_CLASSES + 1, 8, 12)
    torch.testing.assert_close(
        probabilities(logits, "multiclass").sum(dim=1), 1 - logits.softmax(dim=1)[:, 0]
    )


def test_unknown_loss_type_lists_registered_names() -> None:
    with pytest.raises(
        ValidationError, match=r"Input should be 'bce', 'soft_bce', 'focal', 'dice' or 'lovasz'"
    ):
        LossTerm(type="dise")


def test_bad_loss_arguments_name_the_term() -> None:
    with pytest.raises(ConfigError, match=r"loss\[0\]\.args: .*gama"):
        build_loss([LossTerm(type="focal", args={"gama": 2})], "binary")


def test_unknown_mode_is_rejected() -> None:
    with pytest.raises(ConfigError, match="unknown mode 'multi'"):
        build_loss([LossTerm(type="bce")], "multi")


def test_the_segmentation_modes_are_the_names_smps_losses_take() -> None:
    """``modes`` spells them without importing smp's losses, which prediction does not need."""
    from segmentation_models_pytorch import losses as smp_losses  # after common_blocks.training (torchvision)

    assert SEGMENTATION_MODES == (
        smp_losses.MULTILABEL_MODE,
        smp_losses.BINARY_MODE,
        smp_losses.MULTICLASS_MODE,
    )


def test_bce_positive_weights_multiply_each_class_defect_pixels(mask: torch.Tensor) -> None:
    weights = [2.0, 2.0, 1.0, 1.5]
    loss = build_loss([LossTerm(type="bce", args={"pos_weight": weights})], "multilabel")
    logits = torch.randn(mask.shape, generator=torch.Generator().manual_seed(0))
    positive = -F.logsigmoid(logits) * mask
    negative = -F.logsigmoid(-logits) * (1 - mask)
    expected = (positive * torch.tensor(weights).view(1, 4, 1, 1) + negative).mean()
    torch.testing.assert_close(loss(logits, mask), expected)
    gate = build_loss([LossTerm(type="bce", args={"pos_weight": weights})], "classification")
    presence = mask.amax(dim=(2, 3))
    assert gate(logits.mean(dim=(2, 3)), presence).ndim == 0


@pytest.mark.parametrize(
    ("mode", "pos_weight", "message"),
    [
        ("multilabel", [2.0, 1.0], "expected a list of 4 numbers"),
        ("multilabel", [2.0, 1.0, 0.0, 1.0], "positive numbers"),
        ("binary", [2.0, 1.0, 1.0, 1.0], "expected a list of 1 numbers"),
        ("multiclass", [2.0, 1.0, 1.0, 1.0, 1.0], "takes 'weight'"),
    ],
)
def test_bad_positive_weights_name_the_term(mode: str, pos_weight: list, message: str) -> None:
    with pytest.raises(ConfigError, match=rf"loss\[0\]\.args: .*{message}"):
        build_loss([LossTerm(type="bce", args={"pos_weight": pos_weight})], mode)


# --- leaving a class of an image out (pseudo-labels' Ignored classes) ------------------------------


CLASS_WEIGHT = torch.tensor([[1.0, 1.0, 0.0, 1.0], [0.0, 1.0, 1.0, 1.0]])  # image 0 class 3, image 1 class 1


@pytest.mark.parametrize("terms", [["bce"], ["dice"], ["bce", "dice"]])
def test_a_wrong_prediction_on_an_ignored_class_changes_nothing(mask, terms):
    loss = build_loss(
        [LossTerm(type=name, args={"pos_weight": [2, 2, 1, 1.5]} if name == "bce" else {}) for name in terms],
        "multilabel",
    )
    logits = (mask * 4 - 2).requires_grad_()
    wrong = logits.detach().clone()
    wrong[0, 2] = -wrong[0, 2] + 3.0  # the opposite of the truth on both ignored (image, class) pairs
    wrong[1, 0] = 7.0
    wrong.requires_grad_()
    before, after = loss(logits, mask, CLASS_WEIGHT), loss(wrong, mask, CLASS_WEIGHT)
    assert torch.equal(before, after)
    before.backward(), after.backward()
    assert torch.equal(logits.grad, wrong.grad)
    assert not logits.grad[0, 2].any() and not logits.grad[1, 0].any()
    assert logits.grad[0, 0].abs().sum() > 0
    assert not torch.equal(loss(wrong, mask), loss(logits, mask))  # without the weights it counts


def test_ignoring_nothing_is_the_plain_loss_and_ignoring_means_the_rest(mask):
    logits = torch.randn(mask.shape, generator=torch.Generator().manual_seed(1))
    ones = torch.ones(2, N_CLASSES)
    for name in ("bce", "dice"):
        loss = build_loss([LossTerm(type=name)], "multilabel")
        assert loss(logits, mask, ones).item() == pytest.approx(loss(logits, mask).item(), rel=1e-6)
    bce = build_loss([LossTerm(type="bce")], "multilabel")
    kept = F.binary_cross_entropy_with_logits(logits[:, [0, 1, 3]][0], mask[:, [0, 1, 3]][0], reduction="sum")
    kept += F.binary_cross_entropy_with_logits(logits[1, 1:], mask[1, 1:], reduction="sum")
    assert bce(logits, mask, CLASS_WEIGHT).item() == pytest.approx(kept.item() / (6 * 16 * 24), rel=1e-6)


def test_a_classifier_leaves_the_class_out_too():
    loss = build_loss([LossTerm(type="bce")], CLASSIFICATION_MODE)
    target = torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.0, 0.0, 1.0, 0.0]])
    logits = torch.tensor([[3.0, -3.0, 9.0, 2.0], [-9.0, -1.0, 2.0, -2.0]])
    changed = logits.clone()
    changed[0, 2], changed[1, 0] = -9.0, 9.0
    assert torch.equal(loss(logits, target, CLASS_WEIGHT), loss(changed, target, CLASS_WEIGHT))


@pytest.mark.parametrize(
    ("terms", "mode", "message"),
    [
        (["bce", "lovasz"], "multilabel", r"loss\[1\].type: 'lovasz' cannot leave a class out of the loss as X asks"),
        (["focal"], "multilabel", r"loss\[0\].type: 'focal' cannot leave a class out"),
        (["bce"], "binary", "X leaves classes out of the loss, which needs mode multilabel, not binary"),
    ],
)  # fmt: skip
def test_losses_that_cannot_leave_a_class_out_are_refused(terms, mode, message):
    with pytest.raises(ConfigError, match=message) as error:
        check_class_weights([LossTerm(type=name) for name in terms], mode, "X")
    assert "\n" not in str(error.value)
    check_class_weights([LossTerm(type="bce"), LossTerm(type="dice")], "multilabel", "X")
