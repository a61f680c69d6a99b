"""Image preparation shared by training, prediction and export: channels first, the
channel count the model takes (RGB to grey by luma), and the percentile normalisation
every source, ``segunet predict`` and an exported model apply alike. Pure functions."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Literal

import numpy as np

from segunet.config.schema import Range
from segunet.errors import SegunetError

#: ITU-R BT.709 luma weights (as skimage's rgb2gray) for turning RGB into grey.
LUMA = (0.2125, 0.7154, 0.0721)


Percentile = Annotated[float, Range(ge=0, le=100)]

#: The intensity percentiles images are normalised between unless a config says otherwise.
DEFAULT_PERCENTILES = (1.0, 99.8)


#: ``data.polarity``: images as they are, or ``bright_objects``: an image whose background is
#: bright (brightfield, H&E) inverted, x -> 1 - x, so objects are bright on dark in every
#: image, as in fluorescence; one model then sees one polarity whatever the modality.
Polarity = Literal["as_is", "bright_objects"]


def bright_background(normalised: np.ndarray) -> bool:
    """Whether most pixels of a normalised ``(C, *spatial)`` image are bright: the median of
    its channel mean above one half. Objects cover a minority of the pixels in the images
    this is meant for, so the median is the background's level."""
    return float(np.median(np.asarray(normalised).mean(axis=0))) > 0.5


def has_colour(normalised: np.ndarray) -> bool:
    """Whether a normalised ``(C, *spatial)`` image is RGB whose channels differ (not grey
    saved as RGB)."""
    norm = np.asarray(normalised)
    return norm.shape[0] == 3 and float(np.abs(norm - norm.mean(0, keepdims=True)).mean()) > 0.01


def appearance(normalised: np.ndarray) -> str:
    """What a normalised ``(C, *spatial)`` image looks like, colour or grey on a bright or
    dark background (``"colour, bright background"``: H&E; ``"grey, dark background"``:
    fluorescence): the kinds ``data.balance=appearance`` draws from."""
    norm = np.asarray(normalised)
    return (f"{'colour' if has_colour(norm) else 'grey'}, "
            f"{'bright' if bright_background(norm) else 'dark'} background")


def orient(normalised: np.ndarray, polarity: str) -> np.ndarray:
    """A normalised image with bright objects on dark (``polarity=bright_objects``), or as
    it is (``as_is``)."""
    if polarity == "bright_objects" and bright_background(normalised):
        return np.subtract(1, normalised, dtype=np.float32)
    return normalised


def check_polarity(polarity: str, percentiles: Sequence[float] | None) -> None:
    if polarity not in ("as_is", "bright_objects"):
        raise SegunetError(f"data.polarity={polarity!r}: use as_is or bright_objects")
    if polarity != "as_is" and percentiles is None:
        raise SegunetError("data.polarity=bright_objects inverts normalised images: set "
                           "data.percentiles (e.g. [1.0,99.8]) or data.polarity=as_is")


def percentile_range(
    image: np.ndarray,
    low: float = DEFAULT_PERCENTILES[0],
    high: float = DEFAULT_PERCENTILES[1],
    channel_axis: int | None = 0
) -> tuple[np.ndarray, np.ndarray]:
    """``(p_low, p_high - p_low)`` per channel as float32, shaped to broadcast against
    ``image``. Where the percentiles coincide (a mostly constant channel) the channel's min
    and max are used instead; a constant channel gets scale 0."""
    x = np.asarray(image)
    axes = None if channel_axis is None else tuple(
        a for a in range(x.ndim) if a != channel_axis % x.ndim
    )
    lo, hi = np.percentile(x, [low, high], axis=axes, keepdims=True)
    flat = hi <= lo
    if np.any(flat):  # mostly constant channel: fall back to the full range
        lo = np.where(flat, np.min(x, axis=axes, keepdims=True), lo)
        hi = np.where(flat, np.max(x, axis=axes, keepdims=True), hi)
    return lo.astype(np.float32), (hi - lo).astype(np.float32)


def apply_range(x: np.ndarray, lo: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """``(x - lo) / scale`` as float32, 0 where the scale is 0."""
    out = np.zeros(x.shape, np.float32)
    np.divide(x.astype(np.float32) - lo, scale, out=out, where=scale > 0)
    return out


def normalize_percentile(
    image: np.ndarray,
    low: float = DEFAULT_PERCENTILES[0],
    high: float = DEFAULT_PERCENTILES[1],
    channel_axis: int | None = 0
) -> np.ndarray:
    """``(x - p_low) / (p_high - p_low)`` per channel, as float32: robust to a few hot pixels.

    ``p_low``, ``p_high`` are the ``low``-th and ``high``-th percentiles of each channel
    (of the whole image when ``channel_axis`` is None); see :func:`percentile_range`.
    """
    return apply_range(np.asarray(image), *percentile_range(image, low, high, channel_axis))


def check_finite(image: np.ndarray, source: str) -> None:
    """SegunetError naming ``source`` if the image holds NaN or infinite values."""
    if np.issubdtype(image.dtype, np.inexact) and not np.isfinite(image).all():
        raise SegunetError(
            f"{source} holds NaN or infinite values: fix the file or leave it out of the data"
        )


def image_channels_first(
    image: np.ndarray, spatial_shape: Sequence[int], image_source: str, label_source: str
) -> np.ndarray:
    """``(C, *spatial)`` from an image read as grey ``(*spatial)``, channels-last
    ``(*spatial, C)`` or channels-first ``(C, *spatial)``, telling them apart by the label
    image's shape. An RGBA image loses its alpha channel, which holds no image content."""
    spatial_shape = tuple(spatial_shape)
    if image.shape == spatial_shape:
        return image[None]
    if image.shape[:-1] == spatial_shape:
        image = np.moveaxis(image, -1, 0)
        return image[:3] if image.shape[0] == 4 else image
    if image.shape[1:] == spatial_shape:
        return image
    raise SegunetError(
        f"image {image_source} has shape {image.shape} but its labels {label_source} have "
        f"{spatial_shape}: each label image must cover its image pixel for pixel"
    )


def convert_channels(image: np.ndarray, channels: int | None, source: str) -> np.ndarray:
    """``(C, ...)`` to ``channels`` channels: None keeps them, RGB -> grey by luma, grey ->
    RGB by replication; anything else is an error."""
    c = image.shape[0]
    if channels is None or channels == c:
        return image
    if channels == 1 and c == 3:
        return np.tensordot(np.asarray(LUMA, np.float32), image.astype(np.float32), axes=1)[None]
    if channels == 3 and c == 1:
        return np.repeat(image, 3, axis=0)
    raise SegunetError(
        f"{source} has {c} channels and data.channels={channels}: only RGB -> grey (1) and "
        f"grey -> RGB (3) are converted; set data.channels=null or {c}"
    )


def prepare_image(
    image: np.ndarray, channels: int | None, percentiles: Sequence[float] | None, source: str,
    polarity: str = "as_is",
) -> np.ndarray:
    """``(C, *spatial)`` image -> normalised float32: NaN/inf rejected, channels converted,
    percentile-normalised (``percentiles=None``: as is), oriented (:func:`orient`)."""
    check_finite(image, source)
    image = convert_channels(image, channels, source)
    if percentiles is None:
        return np.ascontiguousarray(image, dtype=np.float32)
    low, high = (float(p) for p in percentiles)
    return orient(normalize_percentile(image, low, high, channel_axis=0), polarity)


def check_percentiles(percentiles: Sequence[float] | None) -> None:
    """``data.percentiles`` is null or ``[low, high]`` with low < high: reversed, they would
    turn every image into its negative and train on it without a word."""
    if percentiles is not None and (len(percentiles) != 2 or percentiles[0] >= percentiles[1]):
        raise SegunetError(
            f"data.percentiles={list(percentiles)} is not valid: expected [low, high] with "
            "low < high (e.g. [1, 99.8]), or null to keep the values as they are"
        )
