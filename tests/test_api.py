"""The Python API (``segunet.load``, ``Model.segment``, ``Model.predict``) against the command
line: the README's example runs and gives what ``segunet predict`` writes."""

from __future__ import annotations

import re
import subprocess
import sys

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile
from helpers import ROOT, TINY, run_in_process

import segunet
from segunet.cli import predict as predict_cli
from segunet.data.synthetic import synthetic_cells
from segunet.errors import SegunetError


@pytest.fixture(scope="module")
def nuclei():
    return segunet.load("nuclei", device="cpu")


@pytest.fixture(scope="module")
def picture():
    image, _ = synthetic_cells((160, 200), seed=11)
    return np.clip(image * 255 / image.max(), 0, 255).astype(np.uint8)


def cli(tmp_path, image_file, *options):
    out = tmp_path / "cli"
    assert predict_cli.run(["model=nuclei", f"input={image_file}", f"output={out}",
                            "outputs=probabilities,instances", "overwrite=true", *options]) == 0
    stem = image_file.stem
    return (tifffile.imread(out / f"{stem}_probabilities.tif"),
            tifffile.imread(out / f"{stem}_instances.tif"))


def test_the_readme_example_runs_and_equals_the_command_line(picture, tmp_path, monkeypatch):
    block = re.search(r"## Python API\n\n```python\n(.*?)```", (ROOT / "README.md").read_text(),
                      re.S).group(1)
    iio.imwrite(tmp_path / "nuclei.png", picture)
    monkeypatch.chdir(tmp_path)
    names: dict = {}
    exec(block, names)  # noqa: S102 - the README's own code
    probs, instances = cli(tmp_path, tmp_path / "nuclei.png", "tta=true")
    np.testing.assert_array_equal(names["probs"].astype(np.float16), probs)
    assert names["probs"].dtype == np.float32
    _, plain = cli(tmp_path, tmp_path / "nuclei.png")
    np.testing.assert_array_equal(names["labels"], plain)
    assert plain.max() > 10  # nuclei found, so equality says something
    _, strict = cli(tmp_path, tmp_path / "nuclei.png", "instances.threshold=0.6",
                    "instances.min_size=30")
    np.testing.assert_array_equal(names["strict"], strict)
    assert not np.array_equal(strict, plain)
    _, big = cli(tmp_path, tmp_path / "nuclei.png", "scale=auto")
    np.testing.assert_array_equal(names["big"], big)


def test_resampling_and_colour_equal_the_command_line(nuclei, picture, tmp_path):
    """An RGB array, channels last, converted to grey as training converted its images,
    and a pixel size the model does not know: still what the command line writes."""
    rgb = np.stack([picture, picture // 2, picture], axis=-1)
    iio.imwrite(tmp_path / "rgb.png", rgb)
    _, expected = cli(tmp_path, tmp_path / "rgb.png", "tta=false")
    np.testing.assert_array_equal(nuclei.segment(rgb, tta=False), expected)
    sized = tmp_path / "sized.tif"
    tifffile.imwrite(sized, picture)
    probs, instances = cli(tmp_path, sized, "tta=false", "diameter=40")
    np.testing.assert_array_equal(nuclei.segment(picture, tta=False, diameter=40), instances)
    np.testing.assert_array_equal(
        nuclei.predict(picture, tta=False, diameter=40).astype(np.float16), probs)


def test_a_run_folder_means_its_best_checkpoint(tmp_path):
    run = tmp_path / "run"
    done = run_in_process("train", *TINY, "trainer.max_steps=2", "trainer.val_every=2",
                          "postprocess.enabled=false", f"hydra.run.dir={run}", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    model = segunet.load(run, device="cpu")
    assert model.file == run / "checkpoints" / "best.pt"
    image = np.random.default_rng(0).random((40, 44)).astype(np.float32)
    assert model.predict(image).shape == (2, 40, 44)
    assert model.segment(image).shape == (40, 44)


def test_outputs_are_segment_and_predict_from_one_prediction(nuclei, picture):
    both = nuclei.outputs(picture, ["instances", "probabilities", "labels"], tta=False)
    np.testing.assert_array_equal(both["instances"], nuclei.segment(picture, tta=False))
    np.testing.assert_array_equal(both["probabilities"], nuclei.predict(picture, tta=False))
    np.testing.assert_array_equal(both["labels"], both["probabilities"].argmax(0))


@pytest.mark.parametrize("call, message", [
    (lambda m, x: m.segment(x, treshold=0.5), "segment(treshold=...) is no option: it takes "
                                              "method, threshold, min_size"),
    (lambda m, x: m.segment(x, threshold=1.5), "instances.threshold=1.5 is not valid"),
    (lambda m, x: m.predict(x, scale="big"), "scale='big' is not valid: expected none or auto"),
    (lambda m, x: m.predict(x, scale="auto", pixel_size=0.5),
     "scale=auto and pixel_size= contradict each other"),
    (lambda m, x: m.predict(np.zeros((5, 40, 40), np.uint8)),
     "an image of shape (5, 40, 40) is a (Z, Y, X) stack to this 2D model"),
    (lambda m, x: m.predict(np.zeros((40, 40), complex)), "image holds complex128 values"),
    (lambda m, x: m.outputs(x, ["objects"]), "outputs(['objects']): each one of instances"),
])
def test_bad_calls_are_one_line_errors(nuclei, picture, call, message):
    with pytest.raises(SegunetError) as caught:
        call(nuclei, picture)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_import_segunet_does_not_import_torch():
    code = "import sys, segunet; print('torch' in sys.modules, callable(segunet.load))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    assert done.stdout.split() == ["False", "True"]
