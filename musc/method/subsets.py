"""Splitting a category into subsets that are scored on their own (``divide_num``, docs/METHOD.md
1.4), as the reference does for very large categories: stratified by each image's group (its
defect type), the same shuffle each time."""
from __future__ import annotations

import random
from typing import Sequence


def subsets(groups: Sequence[str], divide_num: int, seed: int) -> list[list[int]]:
    """Indices of each subset (docs/METHOD.md 1.4), from each image's group (``subset_groups``):
    stratified by group, the same shuffle each time."""
    if divide_num == 1:
        return [list(range(len(groups)))]
    members_of: dict[str, list[int]] = {}
    for index, group in enumerate(groups):
        members_of.setdefault(group, []).append(index)
    result = []
    for part in range(divide_num):
        generator = random.Random(seed)  # the reference's random.seed + random.shuffle, without shared state
        chosen = []
        for members in members_of.values():
            shuffled = list(members)
            generator.shuffle(shuffled)
            chosen.extend(shuffled[part::divide_num])
        result.append(chosen)
    return result
