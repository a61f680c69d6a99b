"""Checkpoints that survive crashes and reload anywhere.

Written atomically (temp file, fsync, rename) so a crash mid-write never leaves a truncated
``last.pt``; stored as plain tensors and Python containers so ``torch.load(weights_only=True)``
reads them; ``_orig_mod.`` (torch.compile) and ``module.`` (DDP) prefixes stripped so a
state dict from a compiled or distributed run loads into a bare model.
"""

from __future__ import annotations

import math
import os
import random
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from segunet.atomic import write_atomic
from segunet.data.normalize import DEFAULT_PERCENTILES
from segunet.errors import SegunetError

_PREFIXES = ("_orig_mod.", "module.")


def clean_state_dict(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Strip wrapper prefixes, in any nesting order (DDP around compile or the reverse)."""
    out = {}
    for key, value in state.items():
        stripped = True
        while stripped:
            stripped = False
            for prefix in _PREFIXES:
                if key.startswith(prefix):
                    key, stripped = key[len(prefix) :], True
        out[key] = value
    return out


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The bare model inside DDP and torch.compile wrappers."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if not isinstance(inner, torch.nn.Module):
            return model
        model = inner


def rng_state() -> dict[str, Any]:
    """RNG states as tensors and ints only, so the checkpoint stays weights_only-loadable."""
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": _python_rng()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _python_rng() -> list:
    version, internal, gauss = random.getstate()
    return [version, list(internal), gauss]


def save_atomic(obj: Any, path: str | os.PathLike) -> None:
    """torch.save to a temp file in the same folder, fsync, then rename over ``path``."""
    write_atomic(path, lambda f: torch.save(obj, f))


def resolve_checkpoint(path: str | os.PathLike, prefer: str = "last") -> Path:
    """A checkpoint file, or a run folder: its ``checkpoints/last.pt`` (to continue it), or
    with ``prefer="best"`` its ``best.pt`` where there is one (to use it)."""
    p = Path(path).expanduser()
    names = ("best.pt", "last.pt") if prefer == "best" else ("last.pt",)
    candidates = [p, *(p / "checkpoints" / n for n in names), *(p / n for n in names)]
    for c in candidates:
        if c.is_file():
            return c
    raise SegunetError(
        f"no checkpoint at {p}: pass a .pt file or a run folder containing checkpoints/last.pt"
    )


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Load a segunet checkpoint safely (weights_only) with a clear error if unreadable."""
    return _read_checkpoint(resolve_checkpoint(path), map_location)


def _read_checkpoint(file: Path, map_location: str | torch.device) -> dict:
    import warnings

    from segunet.config.compose import check_literal

    try:
        with warnings.catch_warnings():  # torch's note on a TorchScript file: said below
            warnings.filterwarnings("ignore", message=".*TorchScript archive")
            ckpt = torch.load(file, map_location=map_location, weights_only=True)
    except Exception as e:  # torch's own message would advise weights_only=False: never
        raise SegunetError(_unreadable(file, e)) from e
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise SegunetError(f"{file} is not a segunet checkpoint (no 'model' entry)")
    # Taken literally by every command that reads it: no ${...} resolved against this machine.
    check_literal(ckpt.get("config"), str(file))
    check_weights(ckpt["model"], file)
    return ckpt


def check_weights(state: Any, file: Path) -> None:
    """Refuse a ``model`` entry that is no state dict, a tensor that is a view larger than
    the data stored for it (a few bytes claiming gigabytes), or a weight that is NaN or
    infinite (the run diverged: every prediction would be NaN)."""
    if not isinstance(state, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise SegunetError(f"{file} is not a segunet checkpoint (its 'model' entry holds no "
                           "weights); pass a .pt file written by segunet train")
    for key, tensor in state.items():
        if tensor.numel() * tensor.element_size() > tensor.untyped_storage().nbytes():
            raise SegunetError(f"{file}: weight {key} of shape {tuple(tensor.shape)} is larger "
                               "than the data stored for it; the file was not written by "
                               "segunet train")
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise SegunetError(f"{file}: weight {key} holds NaN or infinite values (the run "
                               "diverged); use a checkpoint of an earlier step, e.g. best.pt")


_MAGIC = {
    b"II*\x00": "a TIFF image", b"MM\x00*": "a TIFF image", b"\x89PNG": "a PNG image",
    b"\xff\xd8\xff": "a JPEG image", b"\x93NUMPY": "a .npy array", b"\x89HDF": "an HDF5 file",
}


def _unreadable(file: Path, error: Exception) -> str:
    """One line on a file ``torch.load(weights_only=True)`` refused, saying what it is."""
    import pickle
    import zipfile

    try:
        with open(file, "rb") as f:
            head = f.read(8)
        names = zipfile.ZipFile(file).namelist() if zipfile.is_zipfile(file) else None
    except OSError as e:
        return f"cannot read checkpoint {file}: {e.strerror or e}"
    if not head or (head.startswith(b"PK") and names is None):
        return (f"cannot read checkpoint {file}: the file is {'empty' if not head else 'truncated'}"
                "; use another checkpoint of the run (e.g. best.pt) or copy it again")
    what = next((name for magic, name in _MAGIC.items() if head.startswith(magic)), None)
    if file.suffix.lower() == ".onnx":
        what = "an ONNX model"
    elif names is not None and any(n.endswith("/constants.pkl") for n in names):
        what = "a TorchScript model"
    elif isinstance(error, pickle.UnpicklingError) and head.startswith((b"PK", b"\x80")):
        what = "a pickle of Python objects, not only tensors"
    elif names is not None:  # a torch.save zip that is damaged inside
        return (f"cannot read checkpoint {file}: the file is corrupt or no checkpoint "
                f"({type(error).__name__}); use another checkpoint of the run (e.g. best.pt)")
    return (f"cannot read checkpoint {file}: it is not a segunet checkpoint "
            f"({what or 'not written by torch.save'}); pass a .pt file written by segunet "
            "train, or its run folder")


def mismatch_detail(e: RuntimeError) -> str:
    """The first specific line of ``load_state_dict``'s error (its first line only says
    which model failed; the next one names the missing or unexpected keys)."""
    return str(e).strip().splitlines()[1].strip() if "\n" in str(e) else str(e)


def pixel_size_record(sizes: Any) -> dict[str, Any] | None:
    """A checkpoint's ``pixel_size`` entry: ``{"size": [um per spatial axis], "unit":
    "micrometer"}``, or None when the training data's pixel size is unknown."""
    if not sizes:
        return None
    return {"size": [float(s) for s in sizes], "unit": "micrometer"}


def pixel_size_of(ckpt_or_trained: Mapping[str, Any] | Trained) -> tuple[list[float], str] | None:
    """``(sizes, unit)``: the pixel size the model was trained at, one size per spatial axis
    (slowest first), or None if unknown. Takes a checkpoint dict or a :class:`Trained`;
    reads the ``pixel_size`` entry, else the stored ``config.data.pixel_size`` (in um)."""
    if isinstance(ckpt_or_trained, Trained):
        ckpt: Mapping[str, Any] = {"pixel_size": ckpt_or_trained.pixel_size,
                                   "config": ckpt_or_trained.config}
    else:
        ckpt = ckpt_or_trained
    record = ckpt.get("pixel_size")
    if isinstance(record, Mapping) and record.get("size"):
        return _sizes(record["size"], "pixel_size"), str(record.get("unit") or "micrometer")
    config = ckpt.get("config")
    data = config.get("data") if isinstance(config, Mapping) else None
    sizes = data.get("pixel_size") if isinstance(data, Mapping) else None
    return (_sizes(sizes, "config.data.pixel_size"), "micrometer") if sizes else None


def object_sizes_of(trained: Trained) -> tuple[float, float, float] | None:
    """The object diameters the model was trained on, in its pixels (``object_size``): the
    quartiles of its training images' (low, median, high); None where none is recorded."""
    if trained.object_size is None:
        return None
    value = trained.object_size.get("diameter")
    bounds = trained.object_size.get("range", [value, value])
    sizes = [value, *bounds] if isinstance(bounds, list) and len(bounds) == 2 else [None]
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
               and v > 0 for v in sizes) or not sizes[1] <= sizes[0] <= sizes[2]:
        raise SegunetError(f"its object_size {trained.object_size!r} is not a diameter and a "
                           "range around it, in pixels")
    return float(sizes[1]), float(sizes[0]), float(sizes[2])


def _sizes(values: Any, key: str) -> list[float]:
    """Recorded pixel sizes as floats: positive and finite, or a one-line error."""
    try:
        sizes = [float(v) for v in values]
    except (TypeError, ValueError):
        sizes = []
    if not sizes or not all(math.isfinite(v) and v > 0 for v in sizes):
        raise SegunetError(f"its {key} {values!r} is not valid: expected positive sizes in um, "
                           "one per axis")
    return sizes


@dataclass(frozen=True)
class Trained:
    """A checkpoint's model (eval mode), the resolved training config stored with it, the
    post-processing tuned for it (``None`` if never tuned) and the file read."""

    model: torch.nn.Module
    config: dict
    postprocess: dict | None
    file: Path
    pixel_size: dict | None = None  # the checkpoint's entry (see pixel_size_of)
    object_size: dict | None = None  # the checkpoint's entry (see object_diameter_of)


def load_model(
    path: str | os.PathLike, device: str | torch.device = "cpu"
) -> tuple[torch.nn.Module, dict]:
    """The trained model of a checkpoint (or run folder's ``last.pt``), in eval mode, and
    the resolved training config stored with it (see :func:`load_trained`)."""
    trained = load_trained(path, device, prefer="last", tuned=False)
    return trained.model, trained.config


def load_trained(
    path: str | os.PathLike, device: str | torch.device = "cpu", prefer: str = "best",
    tuned: bool = True,
) -> Trained:
    """The model of a checkpoint file or run folder (its ``best.pt`` where there is one, with
    ``prefer="best"``): rebuilt from ``config["model"]``, so no overrides need repeating,
    and only from segunet's own model classes. ``tuned=False``: its tuned post-processing
    is neither read nor checked (``postprocess`` is None), for who replaces or ignores it."""
    file = resolve_checkpoint(path, prefer)
    return trained_of(_read_checkpoint(file, device), file, device, tuned)


def trained_of(ckpt: dict, file: Path, device: str | torch.device = "cpu",
               tuned: bool = True) -> Trained:
    """:func:`load_trained` of the contents ``ckpt`` of ``file``, already read and checked
    as :func:`_read_checkpoint` checks them (a checkpoint, or what a segunet bioimage.io
    package holds)."""
    from segunet.config.compose import checked, upgrade

    config = ckpt.get("config")
    if not isinstance(config, dict) or "_target_" not in config.get("model", {}):
        raise SegunetError(
            f"{file} holds no model config (config.model._target_): use a checkpoint written "
            "by segunet train"
        )
    config = upgrade(config)
    node = checked(config, "model", str(file))  # allowed and typed before anything is built
    state = clean_state_dict(ckpt["model"])
    # First without memory (on the meta device): a config that does not fit the weights it
    # came with (say channels of 65536) never allocates its gigabytes; then for real, the
    # size of the weights stored in the file.
    for where in ("meta", "cpu"):
        with torch.device(where):
            model = _build(node, file)
        try:  # assign: the meta model takes the tensors as they are (a copy is a no-op)
            model.load_state_dict(state, assign=where == "meta")
        except RuntimeError as e:
            raise SegunetError(
                f"{file}: weights do not fit its model config ({mismatch_detail(e)})"
            ) from e
    post = ckpt.get("postprocess") if tuned else None
    pixel_size, object_size = ckpt.get("pixel_size"), ckpt.get("object_size")
    trained = Trained(model.to(device).eval(), config, post if isinstance(post, dict) else None,
                      file, pixel_size if isinstance(pixel_size, dict) else None,
                      object_size if isinstance(object_size, dict) else None)
    try:  # what predict reads besides the model, checked as the model is
        check_normalisation(config.get("data") or {})
        pixel_size_of(trained)
        object_sizes_of(trained)
    except SegunetError as e:
        raise SegunetError(f"{file}: {e}; use a checkpoint written by segunet train") from None
    check_tuned(trained.postprocess, file)
    return trained


def check_normalisation(data: Any) -> None:
    """The stored ``data`` node's intensity percentiles (what predict normalises images
    by): null, or two numbers 0 <= low <= high <= 100; else a one-line error."""
    if not isinstance(data, Mapping):
        raise SegunetError("its config.data is no mapping of data settings")
    p = data.get("percentiles", list(DEFAULT_PERCENTILES))
    numbers = isinstance(p, (list, tuple)) and len(p) == 2 and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in p)
    if p is not None and not (numbers and 0 <= p[0] <= p[1] <= 100):
        raise SegunetError(f"its config.data.percentiles {p!r} is not valid: expected two "
                           "percentiles 0 <= low <= high <= 100, or null")


def check_tuned(post: Mapping[str, Any] | None, file: Path) -> None:
    """The tuned post-processing of checkpoint ``file``, typed and in range, or one line."""
    from segunet.config.schema import schema_of, validate
    from segunet.postprocess.decoding import PostProcess

    if post is None:
        return
    try:
        settings = post.get("settings")
        if not isinstance(settings, Mapping):
            raise SegunetError("its postprocess entry holds no settings")
        merged = validate(settings, schema_of(PostProcess), "postprocess.settings")
        for key, low, high in (("threshold", 0, 1), ("seed_threshold", 0, 1),
                               ("min_size", 0, math.inf), ("grow", 0, math.inf)):
            if not low <= merged[key] <= high:
                raise SegunetError(f"postprocess.settings.{key}={merged[key]} is not valid: "
                                   f"expected {low} to {high}")
    except SegunetError as e:
        raise SegunetError(f"{file}: {e}; segunet tune checkpoint={file} searches it "
                           "again") from None


def build_model(node: Any, source: str) -> torch.nn.Module:
    """The model of a ``model`` config node, from segunet's own model classes only (as a
    checkpoint's is built; ``source`` starts the one-line errors)."""
    from segunet.config.compose import checked

    return _build(checked({"model": node}, "model", source), Path(source))


def _build(node: Any, file: Path) -> torch.nn.Module:
    """The model of a checked config node."""
    from hydra.utils import instantiate

    try:
        return instantiate(node, _convert_="all")
    except Exception as e:  # a renamed class or argument since training
        cause = e.__cause__ or e
        raise SegunetError(
            f"cannot build the model of {file} from its config: "
            f"{type(cause).__name__}: {str(cause).splitlines()[0] if str(cause) else ''}"
        ) from e


#: Parameter names of the output layers: the part of a model that a new task's classes may
#: change, re-initialised when fine-tuning to another number of classes.
HEAD_PREFIXES = ("head.", "heads.", "out.")


@dataclass(frozen=True)
class Initialised:
    """What :func:`init_weights` did: the file read, the tensors loaded from it and those
    left at their fresh initialisation (an output layer of other classes)."""

    file: Path
    loaded: list[str]
    fresh: list[str]


def init_weights(model: torch.nn.Module, path: str | os.PathLike, key: str) -> Initialised:
    """Load a checkpoint's weights into ``model`` to start a new run from them (no optimiser,
    schedule or step). Output-layer tensors of another shape (other classes) keep ``model``'s
    fresh initialisation; any other difference is a one-line error naming ``key``."""
    file = resolve_checkpoint(path, prefer="best")
    given = clean_state_dict(_read_checkpoint(file, "cpu")["model"])
    own = model.state_dict()
    missing, unexpected = sorted(own.keys() - given.keys()), sorted(given.keys() - own.keys())
    misfit = sorted(k for k in own.keys() & given.keys() if own[k].shape != given[k].shape)
    other = missing + unexpected + [k for k in misfit if not k.startswith(HEAD_PREFIXES)]
    if other:
        first = other[0]
        why = "missing" if first in missing else "unexpected" if first in unexpected else (
            f"shape {tuple(given[first].shape)}, this model's {tuple(own[first].shape)}"
        )
        raise SegunetError(
            f"{key}={path}: {file} holds another architecture ({first}: {why}); set the model "
            "options it was trained with (its config.model)"
        )
    model.load_state_dict({k: own[k] if k in misfit else v for k, v in given.items()})
    return Initialised(file, sorted(given.keys() - set(misfit)), misfit)
