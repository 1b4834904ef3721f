"""The ensemble config: which trained runs to average, how, and how to post-process the average.

One YAML names the member families (a training config ``configs/NAME.yaml`` or a run name), the
folds and weight of each, the test-time augmentations, the classifier gate, and the post-processing:
per-class defaults, overridden by the tuned values ``severstal oof`` writes to
``postprocess.thresholds_file`` once that file exists. Checkpoints are ``RUNS_DIR/NAME/foldK/best.ckpt`` (or ``averaged.ckpt``, ``last.ckpt``).
Relative paths are relative to the working directory, as in the training configs.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationInfo, field_validator

from common_blocks.config_io import YAML_SUFFIXES, Section, config_name, load_config_file
from common_blocks.errors import ConfigError, DataError
from common_blocks.evaluation.postprocess import ClassPostprocess, PostprocessConfig
from common_blocks.evaluation.search_grid import (
    DEFAULT_GATES,
    DEFAULT_MIN_AREAS,
    min_size_grid,
    threshold_grid,
)
from common_blocks.evaluation.threshold_search import (
    DEFAULT_GATE_FACTORS,
    SearchResult,
    gate_factor_grid,
    gate_grid,
    min_area_grid,
)
from common_blocks.run_folder import RunPaths

TtaName = Literal["none", "hflip", "vflip"]


class RunRef(Section):
    """Trained runs of one family: ``config`` is ``configs/NAME.yaml`` (its ``name``, else its stem) or
    the run name itself."""

    config: str = Field(
        description="`configs/NAME.yaml` (the run its `name` names, else its stem) or the run name itself"
    )
    folds: list[int] = Field(
        min_length=1, description="distinct fold numbers >= 0: the runs `RUNS_DIR/NAME/foldK/` it loads"
    )
    checkpoint: Literal["best", "averaged", "last"] = Field(
        "best",
        description="which checkpoint of each run: `best` (`best.ckpt`), `averaged` (`averaged.ckpt`, "
        "written with `trainer.average_top_k`) or `last` (`last.ckpt`)",
    )

    @field_validator("config")
    @classmethod
    def _config_exists(cls, value: str) -> str:
        if value.endswith(YAML_SUFFIXES) and not Path(value).is_file():
            raise ValueError(f"{value}: config file not found")
        if not value.endswith(YAML_SUFFIXES) and ("/" in value or not value):
            raise ValueError(f"expected configs/NAME.yaml or a run name, got {value!r}")
        return value

    @field_validator("folds")
    @classmethod
    def _distinct_folds(cls, folds: list[int]) -> list[int]:
        if min(folds) < 0 or len(set(folds)) != len(folds):
            raise ValueError(f"expected distinct fold numbers >= 0, got {folds}")
        return folds

    @property
    def name(self) -> str:
        """The run name, which is the folder of its checkpoints under the runs directory."""
        if not self.config.endswith(YAML_SUFFIXES):
            return self.config
        return config_name(self.config)

    def checkpoint_path(self, runs_dir: Path, fold: int) -> Path:
        return RunPaths.of(runs_dir, self.name, fold).checkpoint(self.checkpoint)


class MemberConfig(RunRef):
    """A segmentation family; its folds are averaged with equal weight, then weighted against the others."""

    weight: float = Field(
        1.0, gt=0, description="the family's weight against the other members (its folds weigh equally)"
    )


class GateConfig(RunRef):
    """The image-level classifier; ``threshold`` replaces every class's tuned gate threshold."""

    threshold: float | None = Field(
        None,
        ge=0,
        le=1,
        description="replaces every class's gate threshold (tuned or default); null = keep them",
    )


class PostprocessSection(PostprocessConfig):
    """Per-class defaults; the tuned file (default RUNS_DIR/NAME/thresholds.json) wins when it exists."""

    thresholds_file: Path | None = Field(
        None,
        description="the tuned post-processing `validate.py oof` writes; it wins over `classes` when it "
        "exists; null = `RUNS_DIR/NAME/thresholds.json`",
    )


_GRID_CHECKS = {
    "thresholds": threshold_grid,
    "min_sizes": min_size_grid,
    "min_areas": min_area_grid,
    "gates": gate_grid,
    "gate_factors": gate_factor_grid,
}


class SearchConfig(Section):
    """The threshold-search grid; thresholds, min_sizes and fill_holes default to the members' ``oof``."""

    thresholds: tuple[float, ...] | None = Field(
        None, description="pixel thresholds searched; null = the members' `oof.thresholds`"
    )
    min_sizes: tuple[int, ...] | None = Field(
        None, description="minimum component sizes searched; null = the members' `oof.min_sizes`"
    )
    fill_holes: bool | None = Field(None, description="fill mask holes; null = the members' `oof.fill_holes`")
    min_areas: tuple[int, ...] = Field(DEFAULT_MIN_AREAS, description="minimum mask areas searched")
    gates: tuple[float, ...] = Field(DEFAULT_GATES, description="gate thresholds searched")
    gate_factors: tuple[float | None, ...] = Field(
        DEFAULT_GATE_FACTORS,
        description="soft-gate factors searched: a gated class's `min_area` is multiplied by the factor (the "
        "soft gate); null drops the class (the hard gate), so `[null]` = hard gate only",
    )

    @field_validator("thresholds", "min_sizes", "min_areas", "gates", "gate_factors")
    @classmethod
    def _valid_grid(cls, values: tuple | None, info: ValidationInfo) -> tuple | None:
        if values is not None:
            try:
                _GRID_CHECKS[info.field_name](values)
            except ConfigError as error:  # "name: problem" -> the problem; pydantic adds the key path
                raise ValueError(str(error).partition(": ")[2]) from None
        return values


class EnsembleConfig(Section):
    """Members averaged (weighted), TTA, the gate, post-processing and its search; ``name`` defaults
    to the file's stem and names the folder of the tuned files."""

    name: str = Field(
        description="names the folder of the tuned files (`RUNS_DIR/NAME/`)",
        json_schema_extra={"shown_default": "file stem"},
    )
    runs_dir: Path = Field(Path("runs"), description="where the runs are (`RUNS_DIR/NAME/foldK/best.ckpt`)")
    data_dir: Path = Field(Path("data/severstal"), description="the Kaggle-layout data")
    members: list[MemberConfig] = Field(
        min_length=1,
        description="the segmentation runs averaged: a list of `{config, folds, weight, checkpoint}`, each "
        "family's folds averaged with equal weight, then the families weighted",
    )
    tta: list[TtaName] = Field(
        default_factory=lambda: ["none"],
        min_length=1,
        description="subset of `none`, `hflip`, `vflip`; flipped predictions are flipped back before "
        "averaging; a member's flips are averaged at its network's resolution (`data.scale`) and resized to "
        "256x1600 once",
    )
    average: Literal["probabilities", "logits"] = Field(
        "probabilities",
        description="`probabilities` (the activated maps are averaged) or `logits` (the logits are averaged, "
        "then activated once)",
    )
    gate: GateConfig | None = Field(
        None,
        description="`{config, folds, threshold, checkpoint}`: classifier runs, or segmentation runs with a "
        "`class_head` (a member may be its own gate: its head's pass is the encoder and the head, no "
        "decoder); null = no gate",
    )
    postprocess: PostprocessSection = Field(
        PostprocessSection(),
        description="per-class defaults (`classes`) and `thresholds_file`; the tuned file wins when it exists",
    )
    search: SearchConfig = Field(
        SearchConfig(),
        description="grids for `validate.py oof`; `thresholds`, `min_sizes`, `fill_holes` default to the "
        "members' `oof` grid",
    )
    leaderboard: Path | None = Field(
        None,
        description="the CSV `validate.py oof` appends a row to; null = `leaderboard.csv` beside the runs "
        "directory",
    )

    @field_validator("tta")
    @classmethod
    def _distinct_tta(cls, tta: list[str]) -> list[str]:
        if len(set(tta)) != len(tta):
            raise ValueError(f"each augmentation at most once, got {tta}")
        return tta

    @property
    def thresholds_path(self) -> Path:
        return self.postprocess.thresholds_file or self.runs_dir / self.name / "thresholds.json"

    @property
    def oof_path(self) -> Path:
        """The ensemble's OOF statistics, beside the tuned thresholds."""
        return self.thresholds_path.with_name("oof.npz")

    @property
    def leaderboard_path(self) -> Path:
        return self.leaderboard or self.runs_dir.parent / "leaderboard.csv"

    def digest(self) -> str:
        """Short hash of the resolved config, to tell leaderboard rows apart."""
        text = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:10]

    @property
    def runs(self) -> list[RunRef]:
        """Every trained family the ensemble loads: the members, then the gate."""
        return [*self.members, *([self.gate] if self.gate else [])]

    def inputs(
        self,
        config_path: Path | None,
        *,
        exported: Path | None = None,
        folder: bool = True,
        tuned: bool = True,
    ) -> tuple[list[tuple[str, Path]], list[tuple[str, Path]]]:
        """What a command run on this ensemble reads, as ``files.check_apart`` takes it: the paths an
        output must not be or hold (the ensemble config, the training configs and their folders, the
        checkpoints, and the tuned thresholds when ``tuned``: ``oof`` writes them, the others read
        them) and the folders it must not lie inside (the data, every run folder it loads and the
        export it reads, ``exported``). An output ``folder`` keeps out of the whole runs_dir (``train``
        and ``sweep`` own the folders there); a file (a submission, the leaderboard) may lie beside
        the runs."""
        configs = [Path(ref.config) for ref in self.runs if ref.config.endswith(YAML_SUFFIXES)]
        holds = [
            ("the folder of the training configs", parent) for parent in sorted({c.parent for c in configs})
        ]
        if config_path is not None:
            holds.insert(0, ("the ensemble config", Path(config_path)))
        holds += [("the training config", config) for config in dict.fromkeys(configs)]
        checkpoints = [ref.checkpoint_path(self.runs_dir, fold) for ref in self.runs for fold in ref.folds]
        holds += [("the checkpoint", path) for path in dict.fromkeys(checkpoints)]
        if tuned:
            holds.append(("the tuned thresholds (postprocess.thresholds_file)", self.thresholds_path))
        within = [("the ensemble's data_dir", self.data_dir)]
        if folder:
            within.append(("the ensemble's runs_dir", self.runs_dir))
        within += [("the run folder", path.parent) for path in dict.fromkeys(checkpoints)]
        if exported is not None:
            within.append(("the export it reads (--exported)", exported))
        return holds, within

    def describe_members(self) -> str:
        """``name[folds]xweight`` of each member (``name:averaged[...]`` when it is not ``best.ckpt``),
        ``+``-joined: the leaderboard's members column."""
        return "+".join(
            f"{m.name}{'' if m.checkpoint == 'best' else ':' + m.checkpoint}[{','.join(map(str, m.folds))}]x{m.weight:g}"
            for m in self.members
        )

    def missing_checkpoints(self, folds: list[int] | None = None) -> list[Path]:
        """Checkpoints of the members and the gate (only of ``folds`` when given) that do not exist."""
        wanted = [
            ref.checkpoint_path(self.runs_dir, fold)
            for ref in self.runs
            for fold in ref.folds
            if folds is None or fold in folds
        ]
        return [path for path in dict.fromkeys(wanted) if not path.is_file()]

    def check_checkpoints(self, folds: list[int] | None = None) -> None:
        """One error listing every missing checkpoint, before any is loaded."""
        missing = self.missing_checkpoints(folds)
        if missing:
            raise ConfigError(
                f"{len(missing)} checkpoint(s) of ensemble {self.name} missing: "
                f"{', '.join(map(str, missing))} (train them with train.py, or fix members, folds, runs_dir)"
            )

    def resolved_postprocess(self) -> tuple[PostprocessConfig, str]:
        """The post-processing inference applies, and a log line saying where it comes from."""
        path = self.thresholds_path
        if (path.exists() or path.is_symlink()) and not path.is_file():
            raise ConfigError(
                f"{path}: postprocess.thresholds_file is not a file (a folder, a broken link?); give the "
                "JSON file `severstal oof` writes, or leave the key out for RUNS_DIR/NAME/thresholds.json"
            )
        if path.is_file():
            try:
                result = SearchResult.load(path)
            except OSError as error:
                raise DataError(
                    f"{path}: cannot read the tuned thresholds ({error.strerror or error})"
                ) from None
            config, source = result.config, f"tuned post-processing from {path} (local CV {result.score:.5f})"
        else:  # absent: the documented fallback
            config = PostprocessConfig(classes=self.postprocess.classes)
            source = f"the config's default post-processing ({path} not found: run severstal oof to tune it)"
        if self.gate is not None and self.gate.threshold is not None:
            config = with_gate_threshold(config, self.gate.threshold)
            source += f", gate threshold {self.gate.threshold:g} for every class"
        return config, f"using {source}"


def with_gate_threshold(config: PostprocessConfig, threshold: float) -> PostprocessConfig:
    """``config`` with every class gated at ``threshold``."""
    classes = tuple(ClassPostprocess(**{**c.model_dump(), "gate": threshold}) for c in config.classes)
    return PostprocessConfig(classes=classes)


def load_ensemble_config(path: str | os.PathLike, overrides: list[str] | None = None) -> EnsembleConfig:
    """Read, override (``key.path=value``) and validate an ensemble config; ``name`` defaults to the stem."""
    return load_config_file(EnsembleConfig, path, overrides)
