"""``segunet data download <name>``: fetch a public dataset into ``data/<name>``, ready for its
preset (``data=<name>``).

Files are downloaded to a temporary folder beside the destination, checked for size,
converted to the layout the preset reads, and only then renamed into place: a crash or an
interrupted download never leaves a half-written dataset behind.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from segunet.data.io import read_array, short_message, write_array
from segunet.errors import SegunetError

CHUNK = 1 << 20


@dataclass(frozen=True)
class Remote:
    """One file to fetch; ``size`` in bytes when known (else the server's Content-Length)."""

    url: str
    filename: str
    size: int | None = None


@dataclass(frozen=True)
class Dataset:
    """A downloadable dataset: its files and how they become the preset's layout.

    ``convert(downloads, out)`` reads the fetched files in ``downloads`` and writes the
    dataset into the (new) folder ``out``; its preset reads ``out/root``. A dataset without
    ``files`` cannot be fetched automatically; ``note`` then says how to get it.
    """

    name: str
    files: tuple[Remote, ...] = ()
    convert: Callable[[Path, Path], None] | None = None
    note: str = ""
    cite: str = ""
    root: str = ""


def convert_lucchi(downloads: Path, out: Path) -> None:
    """EPFL ``training.tif`` / ``training_groundtruth.tif`` -> ``train-volume.tif`` /
    ``train-labels.tif`` (the ISBI layout :func:`~segunet.data.sources.tiff_stack` reads)."""
    image = read_array(downloads / "training.tif")
    labels = read_array(downloads / "training_groundtruth.tif")
    if image.shape != labels.shape:
        raise SegunetError(
            f"downloaded Lucchi volume {image.shape} and labels {labels.shape} differ in shape: "
            "run the download again with --force"
        )
    out.mkdir(parents=True)
    write_array(out / "train-volume.tif", image)
    write_array(out / "train-labels.tif", labels)


def convert_dsb2018(downloads: Path, out: Path) -> None:
    """BBBC038 ``stage1_train.zip`` (``<id>/images/<id>.png``, one ``<id>/masks/*.png`` per
    nucleus) -> ``train/images/<id>.png`` (grey uint8) and ``train/masks/<id>.tif`` (uint16
    instance labels; where masks overlap the later one wins).

    Only the grey (fluorescence) images are kept, as in the shared benchmark subset: the
    colour brightfield/histology ones look nothing alike and would need their own model.
    """
    extracted = downloads / "stage1_train"
    with zipfile.ZipFile(downloads / "stage1_train.zip") as archive:
        archive.extractall(extracted)  # zipfile drops absolute and '..' parts of names
    images, masks = out / "train" / "images", out / "train" / "masks"
    images.mkdir(parents=True)
    masks.mkdir(parents=True)
    kept = 0
    for image_file in sorted(extracted.rglob("images/*.png")):
        sample = image_file.parent.parent
        image = read_array(image_file)
        if image.ndim == 3:
            rgb = image[..., :3]
            if not (rgb == rgb[..., :1]).all():
                continue
            image = rgb[..., 0]
        instances = np.zeros(image.shape, np.uint16)
        for k, mask_file in enumerate(sorted((sample / "masks").glob("*.png")), start=1):
            mask = read_array(mask_file)
            instances[(mask[..., 0] if mask.ndim == 3 else mask) > 0] = k
        write_array(images / f"{image_file.stem}.png", image.astype(np.uint8))
        write_array(masks / f"{image_file.stem}.tif", instances)
        kept += 1
    if not kept:
        raise SegunetError("the DSB 2018 archive held no grey images: is it stage1_train.zip?")


REGISTRY: dict[str, Dataset] = {
    "lucchi": Dataset(
        name="lucchi",
        files=(
            Remote("https://documents.epfl.ch/groups/c/cv/cvlab-unit/www/data/"
                   "%20ElectronMicroscopy_Hippocampus/training.tif", "training.tif"),
            Remote("https://documents.epfl.ch/groups/c/cv/cvlab-unit/www/data/"
                   "%20ElectronMicroscopy_Hippocampus/training_groundtruth.tif",
                   "training_groundtruth.tif"),
        ),
        convert=convert_lucchi,
        cite="Lucchi et al., IEEE TMI 2012 (EPFL CVLab EM dataset)",
    ),
    "dsb2018": Dataset(
        name="dsb2018",
        files=(Remote("https://data.broadinstitute.org/bbbc/BBBC038/stage1_train.zip",
                      "stage1_train.zip"),),
        convert=convert_dsb2018,
        cite="Caicedo et al., Nature Methods 16:1247-1253 (2019); CC0 (BBBC038)",
        root="train",
    ),
    "isbi2012": Dataset(
        name="isbi2012",
        note=(
            "ISBI 2012 cannot be downloaded automatically: register at the challenge site "
            "(http://brainiac2.mit.edu/isbi_challenge/, see also "
            "https://imagej.net/events/isbi-2012-segmentation-challenge), download "
            "train-volume.tif and train-labels.tif and put them in {dest}/isbi2012/"
        ),
        cite="Cardona et al., PLoS Biol 2010; Arganda-Carreras et al., Front. Neuroanat. 2015",
    ),
}


def fetch(url: str, target: Path, size: int | None = None, progress: bool = True) -> Path:
    """Download ``url`` to ``target`` with a progress bar; SegunetError if the byte count
    differs from ``size`` (or, when that is None, from the server's Content-Length)."""
    from tqdm import tqdm

    try:
        response = urllib.request.urlopen(url, timeout=60)
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise SegunetError(
            f"cannot download {url}: {short_message(e)}; check the connection, or fetch the "
            "file by hand"
        ) from e
    with response:
        length = response.headers.get("Content-Length")
        expected = size if size is not None else (int(length) if length else None)
        got = 0
        with open(target, "wb") as f, tqdm(
            total=expected, unit="B", unit_scale=True, desc=target.name, disable=not progress
        ) as bar:
            while chunk := response.read(CHUNK):
                f.write(chunk)
                got += len(chunk)
                bar.update(len(chunk))
    if expected is not None and got != expected:
        raise SegunetError(
            f"download of {url} gave {got} bytes, expected {expected}: run it again "
            "(with --force if the folder exists)"
        )
    return target


def download(
    name: str, dest: str | os.PathLike = "data", force: bool = False, progress: bool = True
) -> Path:
    """Fetch dataset ``name`` into ``dest/name`` atomically; returns that folder.

    An existing ``dest/name`` is replaced only with ``force``, and only once the new copy is
    complete.
    """
    if name not in REGISTRY:
        raise SegunetError(f"no dataset '{name}': choose one of {', '.join(sorted(REGISTRY))}")
    spec = REGISTRY[name]
    dest = Path(dest)
    if not spec.files or spec.convert is None:
        raise SegunetError(spec.note.format(dest=dest))
    target = dest / name
    if target.exists() and not force:
        raise SegunetError(f"{target} already exists: pass --force to replace it")
    dest.mkdir(parents=True, exist_ok=True)
    # Beside the destination, so the final rename stays on one file system.
    work = Path(tempfile.mkdtemp(prefix=f".{name}.download-", dir=dest))
    try:
        downloads, out = work / "downloads", work / name
        downloads.mkdir()
        for remote in spec.files:
            fetch(remote.url, downloads / remote.filename, remote.size, progress)
        try:
            spec.convert(downloads, out)
        except SegunetError:
            raise
        except Exception as e:
            raise SegunetError(
                f"cannot convert the downloaded {name}: {short_message(e)}; run it again"
            ) from e
        if target.exists():  # --force: swap, so the old copy goes only once the new is in
            old = work / "old"
            os.replace(target, old)
        os.replace(out, target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target


def main(argv: Sequence[str] | None = None) -> int:
    """``segunet data download <name> [--dest DIR] [--force]`` (``argv``: the words after
    ``data``). Returns the exit status; errors are one line on stderr."""
    parser = argparse.ArgumentParser(prog="segunet data", description="Get public datasets.")
    commands = parser.add_subparsers(dest="command", required=True)
    get = commands.add_parser(
        "download", help="download a dataset into DEST/<name>",
        description="datasets: " + ", ".join(
            f"{n} ({d.cite})" for n, d in sorted(REGISTRY.items())
        ),
    )
    get.add_argument("name", choices=sorted(REGISTRY))
    get.add_argument("--dest", default="data", help="parent folder (default: data)")
    get.add_argument("--force", action="store_true", help="replace an existing copy")
    args = parser.parse_args(argv)
    try:
        target = download(args.name, args.dest, args.force)
    except SegunetError as e:
        print(f"segunet: error: {e}", file=sys.stderr)
        return 2
    root = target / REGISTRY[args.name].root
    default = Path("data") / args.name / REGISTRY[args.name].root
    print(f"{args.name} is in {target}; train with: segunet train data={args.name}"
          + (f" data.path={root}" if root != default else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
