"""How many images the method needs, and which MSM precisions exist: the checks every stage and entry
point uses (no torch here, so validating a configuration stays cheap)."""
from __future__ import annotations

from typing import Sequence

from ..errors import MuscError

MIN_IMAGES = 2  # mutual scoring compares each image with at least one other
# The paper's MSM window: each patch's score is the mean of its sorted votes from this share of the
# other images to that one (docs/METHOD.md section 4); every default of the window is this one.
TOPMIN_MIN, TOPMIN_MAX = 0.0, 0.3


class TooFewImages(MuscError, ValueError):
    """A set of images is too small for the method or one of its settings."""


def check_image_count(n_images: int, k_list: Sequence[int] = (), subset_sizes: Sequence[int] = ()) -> None:
    """Raise TooFewImages (naming the setting) unless ``n_images`` suffice: at least 2 images, at
    least 2 in each subset (``subset_sizes``, when the set is split by divide_num), and none of
    RsCIN's windows ``k_list`` larger than the set."""
    if n_images < MIN_IMAGES:
        raise TooFewImages(f"mutual scoring needs at least {MIN_IMAGES} images, got {n_images}")
    if subset_sizes and min(subset_sizes) < MIN_IMAGES:
        raise TooFewImages(f"divide_num: splitting {n_images} images into {len(subset_sizes)} subsets leaves "
                           f"{min(subset_sizes)} image(s) in one; MuSc needs at least {MIN_IMAGES} per subset")
    too_large = [int(k) for k in k_list if int(k) > n_images]
    if too_large:
        raise TooFewImages(f"k_list: window size {too_large[0]} is larger than the number of images ({n_images})")


# MSM precisions (docs/METHOD.md section 4): fp32 and bf16 (screened, then exact) give the same scores;
# bf16-fast (bf16 products, no exact refine) changes them slightly and is opt-in.
PRECISIONS = ("fp32", "bf16", "bf16-fast")
EXACT_PRECISIONS = ("fp32", "bf16")


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"msm_precision: expected 'fp32' or 'bf16' (exact), or 'bf16-fast' (not exact), "
                         f"got {precision!r}")
    return precision
