"""The training augmentation's config section: pydantic only, so that the config schema loads without
torch or albumentations (``transforms`` builds the pipelines from it)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from common_blocks.data.rle import IMAGE_SHAPE


class AugmentConfig(BaseModel):
    """Training augmentation; probabilities are per image.

    Crops: ``crop_height`` x ``crop_width`` patches (both None = train on full images). With
    probability ``crop_prefer_defect`` the patch is placed around a random defect pixel
    (``DefectCrop``; a random patch when the image has no defect), otherwise anywhere:
    defects cover a small part of a 1600 px wide strip, and random crops alone would show the
    model mostly background.

    ``crop_widths`` (with ``crop_height``, ``crop_width`` null): multi-scale crops, one of these widths
    per batch, drawn uniformly (9th place: 256/416/608-wide crops mixed every epoch).

    ``blackout``: with this probability one defect component (8-connected, of one class) is painted
    black and removed from the mask (1st place): more clean steel with real texture around it.
    """

    model_config = ConfigDict(extra="forbid")

    crop_height: int | None = Field(
        256, gt=0, description="height of the training crops; it and `crop_width` null = full images"
    )
    crop_width: int | None = Field(
        416, gt=0, description="width of the training crops; it and `crop_height` null = full images"
    )
    crop_widths: tuple[int, ...] | None = Field(
        None,
        description="multi-scale crops (9th place): with `crop_height` set and `crop_width` null, each training "
        "batch is cropped to one of these widths (multiples of 32), drawn uniformly; not with pseudo-labels",
    )
    crop_prefer_defect: float = Field(
        0.5, ge=0, le=1, description="probability that a crop is centred on a defect pixel"
    )
    hflip: float = Field(0.5, ge=0, le=1, description="probability of a horizontal flip")
    vflip: float = Field(0.5, ge=0, le=1, description="probability of a vertical flip")
    brightness_contrast: float = Field(
        0.3, ge=0, le=1, description="probability of albumentations' RandomBrightnessContrast"
    )
    brightness_limit: float = Field(
        0.1, ge=0, le=1, description="RandomBrightnessContrast's brightness limit"
    )
    contrast_limit: float = Field(0.1, ge=0, le=1, description="RandomBrightnessContrast's contrast limit")
    blackout: float = Field(
        0.0,
        ge=0,
        le=1,
        description="probability of painting one defect component (8-connected, of one class, drawn uniformly; "
        "after the crop) black and removing its pixels from every class's mask (1st place)",
    )

    @model_validator(mode="after")
    def _crop_both_or_neither(self) -> AugmentConfig:
        if self.crop_widths is not None:
            if self.crop_height is None or self.crop_width is not None:
                raise ValueError(
                    "crop_widths needs crop_height set and crop_width null (one width per batch)"
                )
            if not self.crop_widths or len(set(self.crop_widths)) != len(self.crop_widths):
                raise ValueError(f"crop_widths: expected distinct widths, got {list(self.crop_widths)}")
            if any(width <= 0 or width % 32 or width > IMAGE_SHAPE[1] for width in self.crop_widths):
                raise ValueError(
                    f"crop_widths: expected multiples of 32 up to {IMAGE_SHAPE[1]}, got {list(self.crop_widths)}"
                )
        elif (self.crop_height is None) != (self.crop_width is None):
            raise ValueError(
                "crop_height and crop_width must both be set (crop) or both be None (full image)"
            )
        return self
