"""The thresholds file that ``severstal oof`` writes (``SearchResult.save``), read back as a pydantic model.

Version 2 added the gate factors; a version-1 file reads as the hard gate (no ``grid.gate_factors``,
no factor axis in its score table, no ``gate_factor`` in its classes). Values are strict: numbers are
numbers (no strings or booleans), NaN is no score, scores lie in [0, 1], the grids pass the checks a
config's grids pass, and the post-processing validates as ``PostprocessConfig`` does in a config
file. Anything else is one DataError naming the file and the key.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    PlainValidator,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic_core import PydanticCustomError

from common_blocks.config_io import describe_issue, validate_strict
from common_blocks.data.formats import N_CLASSES
from common_blocks.errors import ConfigError, DataError
from common_blocks.evaluation.postprocess import PostprocessConfig
from common_blocks.evaluation.search_grid import (
    gate_factor_grid,
    gate_grid,
    min_area_grid,
    min_size_grid,
    threshold_grid,
)
from common_blocks.files import read_input

RESULT_FORMAT_VERSION = 2  # 2 added the gate factors; files of version 1 read as the hard gate


def _problem(text: str) -> PydanticCustomError:
    """A validation error whose message is ``text`` as it is (no "Value error, " before it)."""
    return PydanticCustomError("search_result", text.replace("{", "(").replace("}", ")"))


def _is_integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _plain_numbers(value: Any) -> bool:
    """Whether ``value`` is a number or (nested) lists of numbers, booleans and strings excluded."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, bool) or not isinstance(item, (int, float)):
            return False
    return True


def _numbers(value: Any, low: float = 0.0, high: float = 1.0) -> np.ndarray:
    """A number or a rectangular table of them as float64, every one finite and in [low, high]."""
    if not _plain_numbers(value):
        raise _problem("expected numbers")
    try:
        array = np.asarray(value, dtype=np.float64)
    except ValueError:
        raise _problem("expected a rectangular table of numbers") from None
    bad = ~np.isfinite(array) | (array < low) | (array > high)
    if bad.any():
        shown = float(array[bad].flat[0])
        where = "" if array.ndim == 0 else f" at {list(map(int, np.argwhere(bad)[0]))}"
        raise _problem(f"{shown!r}{where} is not a finite number in [{low:g}, {high:g}]")
    return array


def _grid(make: Callable[[Any], np.ndarray]) -> PlainValidator:
    """A grid axis read as ``make`` checks it for a config (its ConfigError named by the key)."""

    def read(value: Any) -> np.ndarray:
        try:
            return make(_numbers(value, low=-np.inf, high=np.inf))
        except ConfigError as error:
            raise _problem(str(error).partition(": ")[2]) from None

    return PlainValidator(read)


def _factors(value: Any) -> np.ndarray:
    if not isinstance(value, list) or not all(f is None or _plain_numbers(f) for f in value):
        raise _problem("expected a list of numbers and nulls")
    try:
        return gate_factor_grid(value)
    except ConfigError as error:
        raise _problem(str(error).partition(": ")[2]) from None


def _version(value: Any) -> int:
    if not _is_integer(value) or value not in (1, RESULT_FORMAT_VERSION):
        raise _problem(f"format version {value!r}, this code reads 1 and {RESULT_FORMAT_VERSION}")
    return value


def _count(value: Any) -> int:
    if not _is_integer(value) or value < 1:
        raise _problem("expected a whole number >= 1")
    return value


# numpy arrays, checked and converted by these functions alone (JSON has no arrays to check against)
Array = Annotated[np.ndarray, PlainValidator(_numbers)]


class SearchGrid(BaseModel):
    """The grid the search scored: the axes of the score table."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    thresholds: Annotated[np.ndarray, _grid(threshold_grid)]
    min_sizes: Annotated[np.ndarray, _grid(min_size_grid)]
    min_areas: Annotated[np.ndarray, _grid(min_area_grid)]
    gates: Annotated[np.ndarray, _grid(gate_grid)]
    gate_factors: Annotated[np.ndarray, PlainValidator(_factors)]

    def shape(self) -> tuple[int, ...]:
        axes = (self.thresholds, self.min_sizes, self.min_areas, self.gates, self.gate_factors)
        return tuple(axis.size for axis in axes)


class SearchResultFile(BaseModel):
    """One thresholds file, as ``SearchResult.to_dict`` writes it (any version this code reads)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    format_version: Annotated[int, BeforeValidator(_version)]
    score: Array
    class_scores: Array
    n_images: Annotated[int, BeforeValidator(_count)]
    config: PostprocessConfig
    grid: SearchGrid
    scores: Array  # (4, T, M, A, G, F) mean Dice of each class for every setting

    @field_validator("grid", mode="before")
    @classmethod
    def _hard_gate_of_version_1(cls, value: Any, info: ValidationInfo) -> Any:
        if info.data.get("format_version") == 1 and isinstance(value, dict):
            return {"gate_factors": [None], **value}
        return value

    @field_validator("score")
    @classmethod
    def _one_number(cls, value: np.ndarray) -> np.ndarray:
        if value.ndim:
            raise _problem("expected one number")
        return value

    @field_validator("class_scores")
    @classmethod
    def _one_per_class(cls, value: np.ndarray) -> np.ndarray:
        if value.shape != (N_CLASSES,):
            raise _problem(f"expected {N_CLASSES} numbers, got shape {value.shape}")
        return value

    @field_validator("scores")
    @classmethod
    def _one_per_setting(cls, value: np.ndarray, info: ValidationInfo) -> np.ndarray:
        if info.data.get("format_version") == 1:
            value = value[..., None]  # the hard gate, the one gate factor of version 1
        grid = info.data.get("grid")
        expected = (N_CLASSES, *grid.shape()) if grid is not None else value.shape
        if value.shape != expected:
            raise _problem(f"shape {value.shape}, expected {expected} (the classes by the grid)")
        return value


def read_search_result(path: str | os.PathLike) -> SearchResultFile:
    """A thresholds file read and checked; a missing, foreign or malformed one is a DataError naming it
    (and the bad key), on one line."""
    path = Path(path)
    text = read_input(path, DataError, "search result not found")
    try:
        data = json.loads(text.decode("utf-8"))
    except UnicodeDecodeError as error:
        raise DataError(
            f"{path}: not JSON (not UTF-8 text: byte 0x{error.object[error.start]:02x})"
        ) from None
    except json.JSONDecodeError as error:
        raise DataError(f"{path}: not JSON ({error})") from None
    except RecursionError:
        raise DataError(f"{path}: not JSON (nested too deeply)") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: not a search result (expected a JSON object, got {type(data).__name__})")
    try:
        return validate_strict(SearchResultFile, data)
    except ValidationError as error:
        raise DataError(f"{path}: not a search result: {describe_issue(error)}") from None
