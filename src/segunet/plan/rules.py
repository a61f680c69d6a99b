"""The rules of ``segunet plan``: each setting of a recipe derived from the dataset's
:class:`~segunet.plan.fingerprint.Fingerprint`, the device and a time budget, each with its
reason, which the plan writes beside it. ``d50``, ``d95``: median and 95th percentile of the
objects' equivalent diameters, ``a5``: the 5th percentile of their areas (pixels).

==============================  ==============================================================
setting                          rule
==============================  ==============================================================
``data.targets.label_kind``      what the files hold (a 0/255 mask read as instances would be
                                 one object per image)
``data.target``, ``data.metric`` objects touching (>= 5 %): ``boundary`` + ``ap``; binary
                                 labels whose objects fill >= 50 % of the pixels with thin
                                 walls between (gap p50 <= max(4, d50 / 5)): membranes,
                                 ``boundary`` + ``vrand``; instance labels apart:
                                 ``foreground`` + ``ap``; sparse binary: ``foreground`` +
                                 ``iou``; classes: ``foreground`` + ``dice``
depth (levels of the U-Net)      the fewest of 3-5 whose receptive field reaches
                                 max(1.5 d50, d95); none does: refused (objects too large)
``data.patch_size``              the largest valid input that fits the smallest image, up to
                                 256 px (CPU) or 572 px (GPU) per axis (3D: 64 / 132);
                                 ``model.padding=same`` where a valid net's output tile would
                                 be under half its input on an axis (shallow volumes)
width, ``trainer.batch_size``    CPU: 16 channels at the top, batch 4 (the hand recipes'
                                 measured CPU sizes); GPU: 32, and the batch that fills 60 %
                                 of the free memory measured on one real step (at most 16)
``trainer.max_steps``            65 % of the budget over the time of a real step measured on
                                 the device (the rest: data, validation, the decoding search)
``data.targets.sigma``           max(d50 / 4, gap p50 / 2), within 2-10 px: the border term
                                 spans the typical gap and stays inside the objects; w0 = 10
``postprocess.grid.min_size``    0 and a5 x 1/16, 1/8, 1/4, 1/2, 1: the search ends at the
                                 small tail of the real objects, whatever their size
``data.channels``                grey (1) unless the images hold colour that separates the
                                 objects >= 1.5x better than grey does (Fisher's criterion)
``data.polarity``                ``bright_objects`` where objects are bright in some images
                                 and dark in others (>= 5 % of each: fluorescence with
                                 brightfield/H&E) and a bright background (median > 0.5)
                                 marks the dark-object images in >= 95 % of them: those
                                 are inverted, in training and predict; one polarity to learn
``augment.p_invert``             0.5 where polarity is mixed and the background does not
                                 tell it (predict cannot invert by it): learn both
``data.balance``                 ``appearance`` where two or more kinds of image (colour or
                                 grey, bright or dark background) each make >= 10 % of those
                                 measured: each kind is drawn in proportion to the square
                                 root of its image count, so a minority modality is not a
                                 minority of what is learnt (fewer: odd images of one
                                 modality, e.g. a dim slice of an EM stack)
``augment.elastic_sigma``        d50 / 2 within 2-10 px (the paper's 10 for large cells)
``augment.scale``                1 +- 0.1 log2(d95 / d5), within 0.1-0.3: the size spread
``augment.rot90``                only where the image plane's pixels are square
``data.val_fraction``            images holding about 500 objects (at least 2 images, at most
                                 20 %): enough to rank the decodings
3D                               anisotropy above 3: slices as 2D images (a 3D net would pool
                                 the coarse axis too early); else one 3D net
==============================  ==============================================================
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from segunet.errors import SegunetError
from segunet.models.shapes import nearest_valid_sizes, output_size
from segunet.plan.fingerprint import Fingerprint

#: Largest patch side per axis, by device and dims.
PATCH_CAP = {("cpu", 2): 256, ("cuda", 2): 572, ("cpu", 3): 64, ("cuda", 3): 132}
#: Objects the validation images should hold.
VAL_OBJECTS = 500
#: Share of the measured images a kind of image needs to count as a modality of its own.
MODALITY_SHARE = 0.1
#: Share of the budget that trains; the rest prepares data, validates and searches.
TRAIN_SHARE = 0.65


@dataclass(frozen=True)
class Device:
    """Where training runs: ``kind`` cpu or cuda, free memory in bytes (None: unknown)."""

    kind: str
    free_memory: int | None = None
    name: str = ""


@dataclass(frozen=True)
class Choice:
    key: str  # dotted config key
    value: Any
    why: str


@dataclass
class Plan:
    """A recipe: the model config to start from, and the settings with their reasons."""

    model: str  # configs/model/<name>
    choices: list[Choice] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)  # budget, step time, device

    def set(self, key: str, value: Any, why: str) -> None:
        self.choices.append(Choice(key, value, why))

    def value(self, key: str) -> Any:
        return next(c.value for c in self.choices if c.key == key)


#: ``(model kwargs, patch, batch) -> (seconds per step, peak bytes or None)``
StepTimer = Callable[[dict, tuple[int, ...], int], tuple[float, int | None]]


def receptive_field(levels: int) -> int:
    """Pixels per axis one output pixel of a ``levels``-level U-Net sees (3x3 convs)."""
    size = nearest_valid_sizes(600, levels, "valid")[1]
    return size - output_size(size, levels, "valid") + 1


def task_of(fp: Fingerprint) -> tuple[str, str, str]:
    """``(target, metric, reason)`` from the labels and how their objects lie."""
    d50, gap50 = fp.diameter["p50"], fp.gap.get("p50", math.inf)
    if fp.label_kind == "classes":
        return "foreground", "dice", "class labels: semantic segmentation, scored by Dice"
    if fp.touching >= 0.05:
        return "boundary", "ap", (f"{fp.touching:.0%} of the objects touch another: the "
                                  "boundary class separates them, scored by mean AP")
    if fp.label_kind == "binary" and fp.foreground >= 0.5 and gap50 <= max(4.0, d50 / 5):
        return "boundary", "vrand", (
            f"regions filling {fp.foreground:.0%} of the image between thin walls (gap p50 "
            f"{gap50:g} px): membranes, split by the boundary class, scored by V_Rand")
    if fp.label_kind == "instances":
        return "foreground", "ap", ("instance labels, objects apart: the foreground, split "
                                    "into its components, scored by mean AP")
    return "foreground", "iou", (f"sparse objects ({fp.foreground:.0%} of the pixels) in "
                                 "binary labels: the foreground, scored by IoU")


def plan(fp: Fingerprint, data: Mapping[str, Any], device: Device, budget_s: float,
         time_step: StepTimer) -> Plan:
    """The recipe for the dataset ``fp`` measured (``data``: its data config) on ``device``
    within ``budget_s`` seconds of ``segunet train``."""
    dims, slices = fp.spatial_dims, None
    if dims == 3 and fp.anisotropy > 3 and "slices_as" in data:
        dims, slices = 2, (f"voxels {fp.anisotropy:g}x coarser along one axis: slices as 2D "
                           "images (a 3D net would pool that axis too early)")
    d50, d95 = fp.diameter["p50"], fp.diameter["p95"]
    result = Plan(model="unet" if dims == 2 else "unet3d")
    if slices:
        result.set("data.slices_as", "2d", slices)

    _labels(result, fp)
    target, metric, why = task_of(fp)
    result.set("data.target", target, why)
    result.set("data.metric", metric, "what validation, best.pt and the decoding search rank by")

    reach = max(1.5 * d50, d95)
    levels = next((n for n in (3, 4, 5) if receptive_field(n) >= reach), None)
    if levels is None:
        raise SegunetError(
            f"{fp.source}: objects are {d50:g} px across (median; p95 {d95:g}), more than "
            f"the deepest U-Net sees ({receptive_field(5)} px): downsample the images and "
            "labels, or set data.pixel_size to train at a coarser scale"
        )
    patch, padding = _patch(fp, dims, levels, device.kind, slices is not None)
    width, batch, step_s = _width_batch(result, fp, device, dims, levels, patch, padding, target,
                                        time_step)
    channels = [width * 2 ** i for i in range(levels)]
    result.set("model.channels", channels,
               f"{levels} levels: receptive field {receptive_field(levels)} px >= "
               f"max(1.5 x d50, d95) = {reach:.0f} px; {width} channels at the top ({device.kind})")
    if padding == "same":
        result.set("model.padding", "same", "the volume is too shallow for a valid net's "
                   "context: padded convolutions keep every slice")
    result.set("model.norm", "batch", "BatchNorm: trains fast at the short budgets a plan has")
    result.set("data.patch_size", list(patch),
               f"the largest valid input that fits the smallest image "
               f"({'x'.join(map(str, fp.shape_min))}), capped for the {device.kind}")
    result.set("trainer.batch_size", batch, f"{batch} per step on the {device.kind}")
    steps = max(100, int(TRAIN_SHARE * budget_s / step_s))
    result.set("trainer.max_steps", steps,
               f"{TRAIN_SHARE:.0%} of the {budget_s:.0f} s budget at {step_s:.3f} s per step "
               "(measured on the device)")
    result.set("trainer.val_every", max(50, steps // 4), "validation four times")

    _weights(result, fp, target)
    _decoding(result, fp)
    _image(result, fp, dims)
    _polarity(result, fp, data)
    _balance(result, fp)
    _augment(result, fp, dims)
    _validation(result, fp, dims, slices is not None)
    # A source takes only its own keys (synthetic data has no channels or split share).
    result.choices = [c for c in result.choices if not c.key.startswith("data.")
                      or c.key.split(".")[1] in data]
    result.info = {"budget_s": budget_s, "step_s": round(step_s, 4), "device": device.kind,
                   "device_name": device.name}
    return result


def _labels(result: Plan, fp: Fingerprint) -> None:
    kind = fp.label_kind
    result.set("data.targets.label_kind", kind, f"the label files hold {fp.label_values} "
               f"values: {kind}")
    if kind == "binary":
        result.set("data.targets.foreground_value", fp.foreground_value,
                   "the one object value in the label files")
    if kind == "classes":
        result.set("data.targets.num_classes", fp.label_values, "the classes found, with 0")


def _patch(fp: Fingerprint, dims: int, levels: int, device: str, sliced: bool
           ) -> tuple[tuple[int, ...], str]:
    cap = PATCH_CAP[("cuda" if device == "cuda" else "cpu", dims)]
    sides = list(fp.shape_min[-dims:] if not sliced else fp.shape_min[-2:])
    if dims == 3 and fp.images == 1:  # one volume: its last quarter validates (_validation)
        sides[0] = int(sides[0] * 0.75)
    patch, padding = [], "valid"
    for side in sides:
        lower, _ = nearest_valid_sizes(min(side, cap), levels, "valid")
        out = output_size(lower, levels, "valid") if lower else None
        if lower is None or out < lower / 2:
            padding = "same"
        patch.append(lower)
    if padding == "same":
        patch = [next(s for s in nearest_valid_sizes(min(side, cap), levels, "same") if s)
                 for side in sides]
    return tuple(int(p) for p in patch), padding


def _width_batch(result: Plan, fp: Fingerprint, device: Device, dims: int, levels: int,
                 patch: tuple[int, ...], padding: str, target: str, time_step: StepTimer
                 ) -> tuple[int, int, float]:
    in_channels = 1 if _grey(fp) else max(fp.channels)
    out = {"boundary": 3}.get(target, fp.label_values if fp.label_kind == "classes" else 2)
    result.set("model.in_channels", in_channels, "the planned image channels")
    result.set("model.out_channels", out, f"the classes of data.target={target}")
    width = 16 if device.kind != "cuda" else 32
    model = {"in_channels": in_channels, "out_channels": out, "spatial_dims": dims,
             "channels": [width * 2 ** i for i in range(levels)], "padding": padding,
             "norm": "batch", "double_before_pool": dims == 3}
    if device.kind != "cuda":
        seconds, _ = time_step(model, patch, 4)
        return width, 4, seconds
    seconds, peak = time_step(model, patch, 2)
    batch = 2
    if peak and device.free_memory:
        batch = int(max(2, min(16, 2 * 0.6 * device.free_memory // peak)))
        seconds, _ = time_step(model, patch, batch)
    return width, batch, seconds


def _weights(result: Plan, fp: Fingerprint, target: str) -> None:
    d50, gap50 = fp.diameter["p50"], fp.gap.get("p50", 0.0)
    sigma = round(min(10.0, max(2.0, d50 / 4, gap50 / 2)) * 2) / 2
    result.set("data.targets.sigma", sigma, f"max(d50 / 4, gap p50 / 2) = max({d50 / 4:.1f}, "
               f"{gap50 / 2:.1f}) within 2-10 px; w0 = 10 as the paper")
    result.set("data.targets.separate_touching", fp.touching >= 0.05 and fp.label_kind ==
               "instances", "a 1 px gap between touching objects for the border weights"
               if fp.touching >= 0.05 else "objects apart already")
    if target == "boundary" and fp.label_kind == "binary":
        result.set("data.targets.connectivity", 1, "regions meeting diagonally through a thin "
                   "wall stay apart")
    result.set("data.targets.class_weights", None, "the border term alone (balanced classes "
               "skewed the probabilities on the hand recipes)")


def _decoding(result: Plan, fp: Fingerprint) -> None:
    voxel = 1.0
    if fp.pixel_size:
        finest = min(fp.pixel_size)
        voxel = math.prod(fp.pixel_size[-fp.spatial_dims:]) / finest ** fp.spatial_dims
    a5 = fp.area["p5"] / voxel
    grid = sorted({0, *(max(1, round(a5 * f)) for f in (1 / 16, 1 / 8, 1 / 4, 1 / 2, 1))})
    result.set("postprocess.grid", {"min_size": grid},
               f"min_size up to the 5th percentile of the objects' areas ({a5:.0f} px)")
    result.set("postprocess.tta", True, "the 8 flips and turns, where they score better")


def _grey(fp: Fingerprint) -> bool:
    return fp.channels == [1] or (set(fp.channels) <= {1, 3} and (
        fp.colour_gain is None or fp.colour_gain < 1.5))


def _image(result: Plan, fp: Fingerprint, dims: int) -> None:
    if _grey(fp):
        if fp.channels != [1]:
            gain = "no colour" if fp.colour_gain is None else (
                f"colour separates the objects only {fp.colour_gain:g}x better than grey")
            result.set("data.channels", 1, f"grey: {gain}")
    elif set(fp.channels) == {1, 3}:
        result.set("data.channels", 3, f"RGB: colour separates the objects "
                   f"{fp.colour_gain:g}x better than grey (grey images repeated)")
    result.set("data.percentiles", [1.0, 99.8], "per image and channel: robust to hot pixels")


def _polarity(result: Plan, fp: Fingerprint, data: Mapping[str, Any]) -> None:
    share = f"objects darker than the background in {fp.dark_objects:.0%} of the images"
    if not 0.05 <= fp.dark_objects <= 0.95:
        result.set("augment.p_invert", 0.0, f"{share}: one polarity")
        return
    if fp.polarity_rule >= 0.95 and "polarity" in data:
        result.set("data.polarity", "bright_objects",
                   f"{share}; a bright background marks them in {fp.polarity_rule:.0%}: "
                   "such images are inverted, in training and in predict alike")
        result.set("augment.p_invert", 0.0, "one polarity after data.polarity")
        return
    result.set("augment.p_invert", 0.5, f"{share}, and the background does not tell which "
               f"({fp.polarity_rule:.0%}): both polarities in training")


def _balance(result: Plan, fp: Fingerprint) -> None:
    measured = sum(fp.appearances.values())
    modalities = [k for k, n in fp.appearances.items() if n >= MODALITY_SHARE * measured]
    kinds = "; ".join(f"{k} {n}" for k, n in fp.appearances.items())
    if len(modalities) > 1:
        result.set("data.balance", "appearance", f"images of {len(modalities)} kinds "
                   f"({kinds} of those measured): each kind drawn in proportion to the square "
                   "root of its count, so the fewer are learnt too")


def _augment(result: Plan, fp: Fingerprint, dims: int) -> None:
    d5, d50, d95 = fp.diameter["p5"], fp.diameter["p50"], fp.diameter["p95"]
    elastic = round(min(10.0, max(2.0, d50 / 2)), 1)
    result.set("augment.elastic_sigma", elastic, f"d50 / 2 = {d50 / 2:.1f} within 2-10 px")
    spread = round(min(0.3, max(0.1, 0.1 * math.log2(max(d95 / max(d5, 1e-6), 1)))), 2)
    result.set("augment.scale", [round(1 - spread, 2), round(1 + spread, 2)],
               f"the objects' size spread d95 / d5 = {d95 / max(d5, 1e-6):.1f}")
    square = fp.pixel_size is None or abs(fp.pixel_size[-1] / fp.pixel_size[-2] - 1) < 0.01
    result.set("augment.rot90", square, "square pixels in the image plane" if square else
               "pixels not square: no quarter turns")


def _validation(result: Plan, fp: Fingerprint, dims: int, sliced: bool) -> None:
    if fp.images == 1 and dims == 3:
        result.set("data.val_fraction", 0.25, "the last quarter of the volume validates")
        return
    wanted = max(2, math.ceil(VAL_OBJECTS / max(fp.objects_per_image, 1)))
    share = min(0.2, wanted / fp.images)
    share = max(share, 2 / fp.images) if fp.images >= 4 else 0.5
    result.set("data.val_fraction", round(share, 3),
               f"{round(share * fp.images)} of {fp.images} images: about "
               f"{round(share * fp.images * fp.objects_per_image)} objects to rank the "
               "decodings (at most 20 %)")
