"""What several test modules share: the tiny training setup, the command as a subprocess,
test images, tiny checkpoints and the one-line error of a config."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from hydra.errors import HydraException
from hydra.utils import instantiate
from omegaconf.errors import OmegaConfBaseException
from scipy import ndimage as ndi
from torch import nn

from segunet.checkpoint import save_atomic
from segunet.config.compose import check_config, instantiate_group
from segunet.errors import SegunetError, one_line
from segunet.models import UNet

#: The repository, and the shared datasets beside it (``../shared/data``): the tests that use
#: them skip cleanly where it is absent.
ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"

# A tiny but complete training setup: 3-level U-Net, two small synthetic images.
TINY = [
    "experiment=quickstart",
    "model.channels=[4,8,16]",
    "data.n_train=2",
    "data.n_val=1",
    "data.shape=[96,96]",
    "data.patch_size=[76,76]",
    "trainer.batch_size=2",
    "trainer.device=cpu",  # exact-resume and speed expectations are the CPU's, GPU or not
    "logging.progress=false",
]


def run_cli(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run the installed ``segunet`` entry point in a subprocess, as a user would."""
    full_env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"} | (env or {})
    return subprocess.run(
        [sys.executable, "-m", "segunet.cli", *args],
        cwd=cwd, env=full_env, capture_output=True, text=True, timeout=240,
    )


def config_error(make_cfg, group: str, *overrides: str) -> str:
    """The one line ``segunet train <overrides>`` reports for its config: composing it,
    checking every group and building ``group``."""
    try:
        cfg = make_cfg(*overrides)
        check_config(cfg)
        instantiate_group(cfg, group)
    except (SegunetError, HydraException, OmegaConfBaseException) as e:
        return one_line(e)
    raise AssertionError(f"{overrides} gave no error")


def error_line(capsys) -> str:
    """The one ``segunet: error:`` line on stderr, which must be its last (progress lines
    aside)."""
    lines = capsys.readouterr().err.splitlines()
    errors = [line for line in lines if line.startswith("segunet: error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], lines
    return errors[0]


def wait_for(condition, what: str, process: subprocess.Popen, limit: float = 120.0) -> None:
    """Poll until ``condition()`` holds (not a timing assertion: the limit only stops a hung
    test)."""
    deadline = time.monotonic() + limit
    while not condition():
        assert process.poll() is None, f"the command ended before {what}"
        assert time.monotonic() < deadline, f"no {what} within {limit} s"
        time.sleep(0.01)


# --- test images ---------------------------------------------------------------------------


def blobs(
    shape: tuple[int, ...], n: int, seed: int, radius: float = np.inf, holes: float = 0.0,
    offset: int = 0,
) -> np.ndarray:
    """A random instance map of ``n`` seeds: each pixel within ``radius`` of its nearest
    seed takes its id (``+ offset``), so close seeds give touching objects and distant ones
    isolated objects; then a ``holes`` share of random pixels is background."""
    rng = np.random.default_rng(seed)
    seeds = np.zeros(shape, np.int64)
    seeds[tuple(rng.integers(0, s, n) for s in shape)] = np.arange(1, n + 1)
    dist, nearest = ndi.distance_transform_edt(seeds == 0, return_indices=True)
    labels = np.where(dist < radius, seeds[tuple(nearest)] + offset, 0)
    if holes:
        labels[rng.random(shape) < holes] = 0
    return labels


def touching_squares(shape=(32, 40), seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(image, instances)``: two touching squares and a separate one on a textured
    background."""
    inst = np.zeros(shape, np.uint16)
    inst[4:14, 4:14] = 1
    inst[4:14, 14:24] = 2  # touches 1
    inst[20:28, 28:36] = 3
    rng = np.random.default_rng(seed)
    image = (inst > 0) * 120 + rng.integers(0, 60, shape)
    return image.astype(np.uint8), inst


def random_image(shape, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


# --- models --------------------------------------------------------------------------------


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def unet(padding="valid", spatial_dims=2, channels=(4, 8, 16), in_channels=1, out_channels=2):
    torch.manual_seed(0)
    return UNet(in_channels, out_channels, spatial_dims, channels, padding=padding)


def whole_image_reference(model: nn.Module, image: np.ndarray) -> np.ndarray:
    """The network applied once to the whole image, mirror-padded by the context margin (and
    at the far end as far as a valid input size needs), cropped back to the image."""
    spatial = image.shape[1:]
    smallest = model.valid_input_shape([1] * model.spatial_dims)
    margin = [(i - o) // 2 for i, o in zip(smallest, model.output_shape(smallest))]
    total = model.valid_input_shape([n + 2 * m for n, m in zip(spatial, margin)])
    pad = [(0, 0)] + [(m, t - n - m) for n, m, t in zip(spatial, margin, total)]
    padded = np.pad(image, pad, mode="reflect")
    with torch.no_grad():
        probs = torch.softmax(model.eval()(torch.from_numpy(padded[None])), 1)[0].numpy()
    return probs[(slice(None), *(slice(0, n) for n in spatial))]


class FailingImage:
    """An array-like whose reads fail after a few tiles, like a truncated file."""

    def __init__(self, array, reads_ok):
        self.array, self.shape, self.ndim, self.reads_ok = array, array.shape, array.ndim, reads_ok

    def __getitem__(self, index):
        self.reads_ok -= 1
        if self.reads_ok < 0:
            raise OSError("read failed")
        return self.array[index]


# Tiny trained-looking checkpoints for the export and predict tests: a saved state dict plus
# the config a training run would store, without running training.
MODELS = {
    "unet_valid": {"_target_": "segunet.models.UNet", "padding": "valid"},
    "unet_same": {"_target_": "segunet.models.UNet", "padding": "same"},
    "attention_unet": {"_target_": "segunet.models.AttentionUNet", "padding": "valid"},
}


def save_tiny_checkpoint(
    folder: Path, kind: str = "unet_valid", in_channels: int = 1, out_channels: int = 2,
    spatial_dims: int = 2, channels: tuple[int, ...] = (4, 8, 16),
    pixel_size: list[float] | None = None, weights=None,
) -> Path:
    """A model of ``kind`` (by default 3 levels of 4..16 channels) saved as
    ``folder/checkpoints/last.pt`` (the layout of a run folder); returns the file.
    ``pixel_size``: the training pixel size it records, as training does; ``weights``: a
    function that sets the model's weights (else random)."""
    model_cfg = {
        **MODELS[kind], "in_channels": in_channels, "out_channels": out_channels,
        "spatial_dims": spatial_dims, "channels": list(channels), "norm": None, "dropout": 0.0,
    }
    torch.manual_seed(0)
    model = instantiate(model_cfg)
    if weights is not None:
        with torch.no_grad():
            weights(model)
    config = {"model": model_cfg, "data": {"percentiles": [1.0, 99.8], "channels": None,
                                           "pixel_size": pixel_size}}
    record = {"size": pixel_size, "unit": "micrometer"} if pixel_size else None
    path = folder / "checkpoints" / "last.pt"
    save_atomic({"model": model.state_dict(), "config": config, "step": 2,
                 "pixel_size": record}, path)
    return path


def run_in_process(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """``segunet <args>`` in this process, in ``cwd``: what :func:`run_cli` returns, without
    starting Python and importing torch again. Hydra's global state, the logging handlers
    its runs add (to the root logger and to the run log's ``segunet.console``), ``sys.argv``
    and the working folder are restored afterwards."""
    import contextlib
    import io
    import logging

    from hydra.core.global_hydra import GlobalHydra

    from segunet.cli import dispatch as cli

    out, err = io.StringIO(), io.StringIO()
    root, console = logging.getLogger(), logging.getLogger("segunet.console")
    saved = (list(sys.argv), os.getcwd(), list(root.handlers), root.level, list(console.handlers))
    code = 0
    try:
        os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            cli.main(list(args))
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    finally:
        sys.argv[:] = saved[0]
        os.chdir(saved[1])
        root.handlers[:] = saved[2]
        root.setLevel(saved[3])
        for handler in set(console.handlers) - set(saved[4]):
            handler.close()  # a run's train.log: later runs in this process log elsewhere
        console.handlers[:] = saved[4]
        GlobalHydra.instance().clear()
    return subprocess.CompletedProcess(["segunet", *args], code, out.getvalue(), err.getvalue())


def same_objects(a: np.ndarray, b: np.ndarray) -> None:
    """``a`` and ``b`` label the same pixel sets, ids aside: background on the same pixels,
    and the (a, b) id pairs a one-to-one map (no object split, none merged)."""
    np.testing.assert_array_equal(a > 0, b > 0)
    pairs = np.unique(np.stack([a[a > 0], b[b > 0]]), axis=1)
    assert len(np.unique(pairs[0])) == len(np.unique(pairs[1])) == pairs.shape[1], (
        "an object is split or two are merged")


def detector(model, threshold: float = 0.5, gain: float = 50.0) -> None:
    """Weights that make a 2-level valid U-Net (2D or 3D) a detector of bright regions:
    foreground probability ``sigmoid(gain * (K * x - threshold))``, ``K`` four box filters
    on the input's path through the first level and its skip; everything else zero."""
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        for conv in (model.encoders[0][0], model.encoders[0][2], model.decoders[0][0],
                     model.decoders[0][2]):
            box = conv.weight[0, 0]
            conv.weight[0, 0] = torch.full_like(box, 1 / box.numel())
        model.head.weight[1, 0] = gain
        model.head.bias[1] = -gain * threshold


def smooth(shape, seed):
    """A uint8 image of smooth blobs (random noise blurred), that :func:`detector` finds."""
    blurred = ndi.gaussian_filter(np.random.default_rng(seed).random(shape), 4)
    span = blurred.max() - blurred.min()
    return ((blurred - blurred.min()) / span * 255).astype(np.uint8)
