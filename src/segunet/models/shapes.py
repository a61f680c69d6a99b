"""Spatial-size arithmetic of the U-Net, per axis and free of torch.

A size is valid when every convolution output is at least 1 pixel and every max-pool input is
even, so that the skip connections line up with the up-convolutions; the U-Net paper picks its
572 x 572 tile this way (Ronneberger et al. 2015, Sec. 2). Unpadded ("valid") 3x3 convolutions
trim 2 pixels per axis; padded ("same") ones trim none. Every axis obeys the same rule, and
widths (channel counts) play no part.
"""

from __future__ import annotations

from functools import lru_cache

from segunet.models.blocks import Padding


def double_conv_trim(padding: Padding) -> int:
    """Pixels per axis that two 3x3 convolutions remove."""
    if padding not in ("valid", "same"):
        raise ValueError(f"padding must be 'valid' or 'same', got {padding!r}")
    return 4 if padding == "valid" else 0


def output_size(size: int, levels: int, padding: Padding) -> int | None:
    """Output size along one axis of a ``levels``-level U-Net, or None if ``size`` is invalid."""
    trim = double_conv_trim(padding)
    for _ in range(levels - 1):  # contracting path
        size -= trim
        if size < 1 or size % 2:
            return None
        size //= 2
    size -= trim  # bottom level
    if size < 1:
        return None
    for _ in range(levels - 1):  # expanding path
        size = 2 * size - trim
        if size < 1:
            return None
    return size


def nearest_valid_sizes(size: int, levels: int, padding: Padding) -> tuple[int | None, int]:
    """The largest valid size <= ``size`` (None if there is none) and the smallest >= ``size``.

    Inverting the contracting path, the valid sizes are ``period * b + offset`` for every
    bottom-level input size ``b >= b_min``: each level doubles and adds ``trim``.
    """
    period, offset, b_min = _lattice(levels, padding)
    below = (size - offset) // period
    above = -((offset - size) // period)  # ceiling division
    lower = period * below + offset if below >= b_min else None
    return lower, period * max(above, b_min) + offset


def valid_input_size(size: int, levels: int, padding: Padding) -> int:
    """The smallest valid input size >= ``size`` along one axis."""
    return nearest_valid_sizes(size, levels, padding)[1]


@lru_cache
def _lattice(levels: int, padding: Padding) -> tuple[int, int, int]:
    period = 2 ** (levels - 1)
    offset = double_conv_trim(padding) * (period - 1)
    # The expanding path must not shrink to nothing either, which bounds b from below; sizes
    # only grow with b, so the first b that works is the bound.
    b_min = 1
    while output_size(period * b_min + offset, levels, padding) is None:
        b_min += 1
    return period, offset, b_min
