"""How many images the method needs: the one check that every stage and entry point uses."""
from __future__ import annotations

from typing import Sequence

MIN_IMAGES = 2  # mutual scoring compares each image with at least one other


class TooFewImages(ValueError):
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
