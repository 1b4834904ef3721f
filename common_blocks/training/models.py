"""Networks built from a ``{type, args}`` config: smp segmentation models and the timm image-level gate.

Segmentation models ("FPN", "Unet") return ``(B, num_outputs, H, W)`` logits at input resolution (and
``(B, 4)`` image-level logits beside them when built with a class head); the classifier ("Classifier")
returns ``(B, num_outputs)`` logits. ``encoder_weights`` is ``"imagenet"`` (downloaded by smp/timm),
``None`` (random init) or the path of a local state-dict file, so that offline machines (Kaggle
kernels) can start from pretrained weights.

smp 0.6's FPN has no ``decoder_attention_type``: scSE attention is available for Unet only.
"""

from __future__ import annotations

import inspect
import pickle
import warnings
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

import segmentation_models_pytorch as smp
import timm
import torch
from pydantic import BaseModel, ConfigDict
from safetensors.torch import load_file
from segmentation_models_pytorch.encoders import get_encoder_names
from timm.models import adapt_input_conv
from torch import nn

from common_blocks.errors import ConfigError

IMAGENET = "imagenet"
DEFAULT_ENCODER = "resnet34"
TIMM_ENCODER_PREFIX = "tu-"
# Arguments of the smp models that the pipeline owns: logits (no activation), a single output.
_PIPELINE_OWNED_ARGS = frozenset({"classes", "activation", "aux_params"})
_SHOWN_KEYS = 3
_REASON_LENGTH = 160  # characters of a loader's error message an error line quotes


class ModelConfig(BaseModel):
    """A network: ``type`` is a key of ``MODELS``, ``args`` go to its factory."""

    model_config = ConfigDict(extra="forbid")

    type: str
    args: dict[str, Any] = {}


def _weights_source(weights: Any, key: str) -> str | Path | None:
    """``encoder_weights`` as ``None``, ``"imagenet"`` or an existing local file."""
    if weights is None or weights == IMAGENET:
        return weights
    if isinstance(weights, str) and Path(weights).is_file():
        return Path(weights)
    raise ConfigError(
        f"{key}.args.encoder_weights: expected 'imagenet', null or an existing weights file, got {weights!r}"
    )


def _load_failure(error: Exception) -> str:
    """One short line for why torch or safetensors could not read a weights file (their messages run
    to several lines of advice, e.g. about ``weights_only``)."""
    if isinstance(error, pickle.UnpicklingError):
        return "not a torch file of tensors (unpickling failed)"
    if isinstance(error, EOFError):
        return "the file ends early"
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if not lines or isinstance(error, LookupError):  # the message is a bare key or index
        detail = f": {lines[0]}" if lines else ""
        return f"not a torch or safetensors file ({type(error).__name__}{detail[:_REASON_LENGTH]})"
    text = lines[0]
    if len(text) > _REASON_LENGTH:
        sentence_end = text.find(". ", 0, _REASON_LENGTH)
        text = text[: sentence_end + 1] if sentence_end > 0 else text[: _REASON_LENGTH - 3] + "..."
    return text


def _read_state_dict(path: Path, key: str) -> dict[str, torch.Tensor]:
    """The tensors of a local weights file; a file torch or safetensors cannot read is one ConfigError
    line, and the warnings torch gave while failing on it (e.g. about a pickle protocol) are dropped."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            if path.suffix == ".safetensors":
                state = load_file(path, device="cpu")
            else:
                state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # torch and safetensors raise many types for a corrupt or foreign file
            reason = "empty file" if path.stat().st_size == 0 else _load_failure(error)
            raise ConfigError(f"{key}.args.encoder_weights: cannot read {path}: {reason}") from error
    for warning in caught:  # a file that loaded: its warnings may matter
        warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    if not isinstance(state, dict) or not all(isinstance(value, torch.Tensor) for value in state.values()):
        raise ConfigError(f"{key}.args.encoder_weights: {path} does not hold a state dict of tensors")
    return state


def _shown(names: Collection[str]) -> str:
    ordered = sorted(names)
    more = f" and {len(ordered) - _SHOWN_KEYS} more" if len(ordered) > _SHOWN_KEYS else ""
    return ", ".join(ordered[:_SHOWN_KEYS]) + more


def load_weights_file(
    module: nn.Module, path: Path, key: str, in_channels: int, replaceable: Collection[str] = ()
) -> None:
    """Load a local state dict into ``module``, keys matched strictly.

    Like smp/timm pretrained loading, a first convolution saved for 3 input channels is adapted to
    ``in_channels`` (summed for grey input), and the tensors named in ``replaceable`` (a classifier
    head trained for another number of classes) keep their fresh initialisation when shapes differ.
    """
    state = _read_state_dict(path, key)
    expected = module.state_dict()
    missing, unexpected = expected.keys() - state.keys(), state.keys() - expected.keys()
    if missing or unexpected:
        raise ConfigError(
            f"{key}.args.encoder_weights: {path} does not fit {type(module).__name__}: "
            f"missing keys [{_shown(missing)}], unexpected keys [{_shown(unexpected)}]"
        )
    for name, saved in state.items():
        if saved.ndim == 4 and saved.shape[1] == 3 and expected[name].shape[1] == in_channels != 3:
            state[name] = adapt_input_conv(in_channels, saved)
    for name in replaceable:
        if state[name].shape != expected[name].shape:
            state[name] = expected[name]
    mismatched = [name for name in expected if state[name].shape != expected[name].shape]
    if mismatched:
        raise ConfigError(
            f"{key}.args.encoder_weights: {path} does not fit {type(module).__name__}: "
            f"tensor shapes differ for [{_shown(mismatched)}]"
        )
    module.load_state_dict(state)


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
        if isinstance(source, Path):
            load_weights_file(model.encoder, source, key, in_channels)
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
    if isinstance(source, Path):
        load_weights_file(model, source, key, in_channels, replaceable=_head_keys(model))
    return model


def _head_keys(model: nn.Module) -> set[str]:
    """State-dict keys of a timm model's classifier layer."""
    head = model.get_classifier()
    prefix = next(name for name, module in model.named_modules() if module is head)
    return {f"{prefix}.{tensor}" for tensor in head.state_dict()}


MODELS: dict[str, Callable[..., nn.Module]] = {
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
    if cfg.type not in MODELS:
        raise ConfigError(f"{key}.type: unknown model '{cfg.type}' (registered: {', '.join(MODELS)})")
    if class_head is None:
        return MODELS[cfg.type](num_outputs, key, **cfg.args)
    if cfg.type == "Classifier":
        raise ConfigError(
            f"class_head: {key}.type Classifier is image-level already; a head is for segmenters"
        )
    return MODELS[cfg.type](num_outputs, key, class_head=class_head, **cfg.args)
