"""Networks built from a ``{type, args}`` config: smp segmentation models and the timm image-level gate.

Segmentation models ("FPN", "Unet") return ``(B, num_outputs, H, W)`` logits at input resolution (and
``(B, 4)`` image-level logits beside them when built with a class head); the classifier ("Classifier")
returns ``(B, num_outputs)`` logits. ``encoder_weights`` is ``"imagenet"`` (downloaded by smp/timm),
``None`` (random init), a local weights file or ``package:DIST`` (``training/weights.py``: files in
the encoder's own layout or another known one), so that offline machines start from pretrained weights.

smp 0.6's FPN has no ``decoder_attention_type``: scSE attention is available for Unet only.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

import segmentation_models_pytorch as smp
import timm
from segmentation_models_pytorch.encoders import get_encoder_names
from torch import nn

from common_blocks.errors import ConfigError
from common_blocks.training.config_sections import DEFAULT_ENCODER, IMAGENET, ModelConfig, ModelName
from common_blocks.training.weights import (
    TIMM_ENCODER_PREFIX,
    classifier_target,
    encoder_target,
    imagenet_unreachable,
    load_pretrained,
    resolve_source,
)

# Arguments of the smp models that the pipeline owns: logits (no activation), a single output.
_PIPELINE_OWNED_ARGS = frozenset({"classes", "activation", "aux_params"})


def _weights_source(weights: Any, key: str) -> str | Path | None:
    return resolve_source(weights, f"{key}.args.encoder_weights")


def _check_smp_encoder(name: str, key: str) -> None:
    if name.startswith(TIMM_ENCODER_PREFIX):
        if not timm.is_model(name.removeprefix(TIMM_ENCODER_PREFIX)):
            raise ConfigError(f"{key}.args.encoder_name: unknown timm model in encoder '{name}'")
    elif name not in get_encoder_names() and not name.startswith("timm-"):
        raise ConfigError(
            f"{key}.args.encoder_name: unknown encoder '{name}' "
            "(see segmentation_models_pytorch.encoders.get_encoder_names(), or 'tu-<timm model>')"
        )


def _segmentation_factory(architecture: type[nn.Module]) -> Callable[..., nn.Module]:
    """A factory for one smp architecture that checks argument names smp would silently drop.

    smp forwards unknown keyword arguments to the encoder, where its own encoders ignore them (a typo
    or FPN's missing ``decoder_attention_type`` would pass unnoticed); only ``tu-`` encoders take
    extra timm arguments.
    """
    accepted = set(inspect.signature(architecture.__init__).parameters) - {"self", "kwargs"}
    accepted -= _PIPELINE_OWNED_ARGS

    def build(
        num_outputs: int,
        key: str,
        encoder_name: str = DEFAULT_ENCODER,
        encoder_weights: str | None = IMAGENET,
        in_channels: int = 3,
        class_head: dict[str, Any] | None = None,
        **args: Any,
    ) -> nn.Module:
        _check_smp_encoder(encoder_name, key)
        owned = sorted(args.keys() & _PIPELINE_OWNED_ARGS)
        if owned:
            raise ConfigError(f"{key}.args.{owned[0]}: set by the pipeline (logits, one channel per output)")
        unknown = args.keys() - accepted
        if unknown and not encoder_name.startswith(TIMM_ENCODER_PREFIX):
            raise ConfigError(
                f"{key}.args.{sorted(unknown)[0]}: not an argument of smp {architecture.__name__} "
                f"(accepted: {', '.join(sorted(accepted))})"
            )
        source = _weights_source(encoder_weights, key)
        pretrained: str | bool | None = None
        if source == IMAGENET:  # smp wants True for timm-universal encoders
            pretrained = True if encoder_name.startswith(TIMM_ENCODER_PREFIX) else IMAGENET
        try:
            model = architecture(
                encoder_name=encoder_name,
                encoder_weights=pretrained,
                in_channels=in_channels,
                classes=num_outputs,
                aux_params=None if class_head is None else {**class_head, "activation": None},
                **args,
            )
        except (KeyError, ValueError, TypeError) as error:
            raise ConfigError(f"{key}.args: {error}") from error
        except OSError as error:
            if source != IMAGENET:
                raise
            raise imagenet_unreachable(error, f"{key}.args.encoder_weights", encoder_name) from None
        if isinstance(source, Path):
            target = encoder_target(model.encoder, encoder_name)
            load_pretrained(model.encoder, target, source, f"{key}.args.encoder_weights", in_channels)
        return model

    build.__doc__ = (
        f"smp {architecture.__name__} with ``classes=num_outputs``, returning logits; with ``class_head`` "
        "(smp ``aux_params``: classes, pooling, dropout) it returns (mask logits, image-level logits)."
    )
    return build


def build_classifier(
    num_outputs: int,
    key: str,
    encoder_name: str = DEFAULT_ENCODER,
    encoder_weights: str | None = IMAGENET,
    in_channels: int = 3,
    dropout: float = 0.0,
    **timm_args: Any,
) -> nn.Module:
    """A timm model with a ``num_outputs`` head: the image-level gate deciding which classes are present."""
    if not timm.is_model(encoder_name):
        raise ConfigError(f"{key}.args.encoder_name: unknown timm model '{encoder_name}'")
    source = _weights_source(encoder_weights, key)
    try:
        model = timm.create_model(
            encoder_name,
            pretrained=source == IMAGENET,
            num_classes=num_outputs,
            in_chans=in_channels,
            drop_rate=dropout,
            **timm_args,
        )
    except TypeError as error:
        raise ConfigError(f"{key}.args: {error}") from error
    except OSError as error:
        if source != IMAGENET:
            raise
        raise imagenet_unreachable(error, f"{key}.args.encoder_weights", encoder_name) from None
    if isinstance(source, Path):
        target = classifier_target(model, encoder_name)
        load_pretrained(model, target, source, f"{key}.args.encoder_weights", in_channels)
    return model


# Each network of ``config_sections.MODEL_TASKS``: its builder.
MODELS: dict[ModelName, Callable[..., nn.Module]] = {
    "FPN": _segmentation_factory(smp.FPN),
    "Unet": _segmentation_factory(smp.Unet),
    "Classifier": build_classifier,
}


def build_model(
    cfg: ModelConfig, num_outputs: int, key: str = "model", class_head: dict[str, Any] | None = None
) -> nn.Module:
    """The network of ``cfg`` with ``num_outputs`` logit channels; ``key`` is the config path in errors.
    ``class_head`` (a segmentation model's image-level head: ``classes``, ``pooling``, ``dropout``)
    makes it return (mask logits, image-level logits)."""
    if class_head is None:
        return MODELS[cfg.type](num_outputs, key, **cfg.args)
    if cfg.type == "Classifier":
        raise ConfigError(
            f"class_head: {key}.type Classifier is image-level already; a head is for segmenters"
        )
    return MODELS[cfg.type](num_outputs, key, class_head=class_head, **cfg.args)
