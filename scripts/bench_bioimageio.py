"""What a bioimage.io consumer gets from segunet's package, against ``segunet predict``: the
shipped ``nuclei`` model exported by ``segunet export format=bioimageio``, run by
bioimageio.core (its own preprocessing, padding, blocking and weights) on held-out DSB
images, whole and in blocks, at each image's own size and at sizes off every grid.

    python scripts/bench_bioimageio.py --limit 20

Per case, over the images: the largest and the mean difference in probability, the share
of pixels whose most probable class differs, and the objects: the mean AP .5:.95 of the
consumer's probabilities decoded with nuclei's tuned settings, scored against segunet's
own objects (1.0: the same nuclei). Blocks are ``2 * halo + 64`` px (an inner size of 8
pooling periods). "aligned" sizes are multiples of the pooling period (8); the off-grid ones
are the image less 3 px per axis, where bioimageio.core moves the last block of an axis out
of phase with the pooling grid.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_scale_auto  # noqa: E402
import quality_data  # noqa: E402

CASES = ("whole, aligned", "whole, off grid", "blocks, aligned", "blocks, off grid")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--limit", type=int, default=20, help="held-out grey DSB images (<= 60)")
    p.add_argument("--shared", type=Path, default=quality_data.SHARED)
    p.add_argument("--weights", default="torchscript",
                   help="the package's weight format bioimageio.core runs")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    import bioimageio.core
    import bioimageio.spec
    from loguru import logger

    from segunet import pretrained
    from segunet.checkpoint import load_trained
    from segunet.data.normalize import normalize_percentile
    from segunet.eval.metrics import average_precision
    from segunet.export.bioimageio import export_package
    from segunet.export.bioimageio_description import Geometry, PackageInfo
    from segunet.infer.predict import predict_tiled
    from segunet.postprocess.decoding import PostProcess, decode

    logger.disable("bioimageio")
    file = pretrained.path_of("nuclei")
    trained = load_trained(file)
    model, geometry = trained.model, Geometry.of(trained.model)
    post = PostProcess(**trained.postprocess["settings"])
    target = trained.config["data"].get("target", "boundary")
    percentiles = trained.config["data"].get("percentiles", [1.0, 99.8])
    images = bench_scale_auto.held_out(args.shared, args.limit)
    with tempfile.TemporaryDirectory() as tmp:
        package = Path(tmp) / "nuclei.zip"
        export_package(file, package, PackageInfo(), None, 17, True, 1e-3)
        descr = bioimageio.spec.load_description(package)
        pipeline = bioimageio.core.create_prediction_pipeline(descr, weight_format=args.weights)
        block = 2 * geometry.halo + 8 * geometry.period
        rows: dict[str, list[tuple[float, float, float, float]]] = {c: [] for c in CASES}
        for i, (name, image, _) in enumerate(images):
            for case in CASES:
                raw = _sized(image, "off grid" in case, geometry.period)
                ours = predict_tiled(model, normalize_percentile(raw[None], *percentiles))
                blocks = ({"input_block_shape": {"input": {"y": block, "x": block}}}
                          if case.startswith("blocks") and min(raw.shape) >= block else {})
                with contextlib.redirect_stderr(io.StringIO()):
                    sample = bioimageio.core.predict(
                        model=pipeline, inputs={"input": raw[None, None]}, **blocks)
                theirs = np.asarray(sample.members["output"].data)[0]
                diff = np.abs(theirs - ours)
                classes = float((theirs.argmax(0) != ours.argmax(0)).mean())
                same = average_precision(decode(theirs, target, post), decode(ours, target, post))
                rows[case].append((float(diff.max()), float(diff.mean()), classes,
                                   float(np.mean(list(same.values())))))
            print(f"{i + 1}/{len(images)} {name} {image.shape}", file=sys.stderr)
    print(f"\nnuclei package ({args.weights}) in bioimageio.core {bioimageio.core.__version__} "
          f"vs segunet predict, {len(images)} held-out grey DSB images; blocks {block} px, "
          f"halo {geometry.halo}")
    print("| case | max diff | mean diff | class differs | objects' AP vs segunet |")
    print("|---|---|---|---|---|")
    for case, values in rows.items():
        v = np.array(values)
        print(f"| {case} | {v[:, 0].max():.3g} | {v[:, 1].mean():.2g} | "
              f"{100 * v[:, 2].mean():.3f}% | {v[:, 3].mean():.4f} |")


def _sized(image: np.ndarray, off_grid: bool, period: int) -> np.ndarray:
    """The grey image cut to whole pooling periods, or less 3 px per axis."""
    grey = image if image.ndim == 2 else image[..., 0]
    if off_grid:
        return grey[:-3, :-3]
    return grey[: grey.shape[0] // period * period, : grey.shape[1] // period * period]


if __name__ == "__main__":
    main()
