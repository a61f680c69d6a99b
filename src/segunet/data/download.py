"""Fetch a public dataset into ``<dest>/<name>``, ready for its preset (``data=<name>``; the
command is ``segunet data download name=<name>``, :mod:`segunet.cli.data`).

Files are downloaded to a temporary folder beside the destination, checked against the
size and SHA-256 pinned for them (a file without a pinned SHA-256 is refused unless the user
gives one with ``sha256=FILE=HEX``), converted to the layout the preset reads, and only then renamed
into place: a crash or an interrupted download never leaves a half-written dataset behind, and
the temps of a killed one are removed by the next download into that folder. From an archive
only the members the conversion reads are unpacked, within :data:`MAX_UNPACKED` bytes.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from segunet.atomic import remove_stale_temps, temp_name
from segunet.data.io import output_folder, read_array, short_message, write_array
from segunet.errors import SegunetError

CHUNK = 1 << 20
#: The most bytes the members of a downloaded archive that a conversion reads may unpack to.
#: BBBC038's stage1_train.zip (~83 MB of PNGs, which deflate cannot shrink) unpacks to about
#: its own size: anything near this cap is not that archive.
MAX_UNPACKED = 1 << 30


@dataclass(frozen=True)
class Remote:
    """One file to fetch, with what the file must be: ``size`` in bytes (None: unknown, the
    server's Content-Length is checked instead) and ``sha256`` (hex; None: not established,
    and the download is refused unless the user pins it with ``sha256=FILE=HEX``)."""

    url: str
    filename: str
    size: int | None = None
    sha256: str | None = None


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
            "run the download again with force=true"
        )
    out.mkdir(parents=True)
    write_array(out / "train-volume.tif", image)
    write_array(out / "train-labels.tif", labels)


#: The members of stage1_train.zip that :func:`convert_dsb2018` reads: ``<id>/images/*.png``
#: and ``<id>/masks/*.png``.
DSB2018_MEMBERS = re.compile(r"[^/]+/(images|masks)/[^/]+\.png")


def safe_member(name: str) -> bool:
    """Whether an archive member's name stays inside the folder it is unpacked into: relative,
    no ``..``, no drive or backslash (zip-slip)."""
    path = PurePosixPath(name)
    return not (path.is_absolute() or ".." in path.parts or "\\" in name or ":" in name)


def extract_members(
    archive: Path, out: Path, wanted: Callable[[str], bool], limit: int | None = None
) -> int:
    """Unpack the members of the zip ``archive`` whose names ``wanted`` accepts into ``out``;
    returns how many. Refused in one line, before anything is unpacked, when a member's name
    would leave ``out`` or their declared sizes add up to more than ``limit`` bytes (default
    :data:`MAX_UNPACKED`); the bytes are counted while unpacking too, as headers can lie."""
    limit = MAX_UNPACKED if limit is None else limit
    redo = "nothing was kept; check where the SHA-256 pinned for it came from"
    with zipfile.ZipFile(archive) as z:
        infos = z.infolist()
        unsafe = next((i.filename for i in infos if not safe_member(i.filename)), None)
        if unsafe is not None:
            raise SegunetError(
                f"{archive.name} holds a member named {unsafe!r}, which would be written "
                f"outside the dataset folder: it is not the published archive; {redo}"
            )
        members = [i for i in infos if not i.is_dir() and wanted(i.filename)]
        declared = sum(i.file_size for i in members)
        if declared > limit:
            raise SegunetError(
                f"{archive.name}: the {len(members)} files needed would unpack to {declared} "
                f"bytes, more than the {limit} allowed: it is not the published archive; {redo}"
            )
        total = 0
        for info in members:
            target = out / info.filename
            target.parent.mkdir(parents=True, exist_ok=True)
            with z.open(info) as source, open(target, "wb") as sink:
                while chunk := source.read(CHUNK):
                    total += len(chunk)
                    if total > limit:
                        raise SegunetError(
                            f"{archive.name} unpacks to more than the {limit} bytes allowed "
                            f"(at {info.filename}): it is not the published archive; {redo}"
                        )
                    sink.write(chunk)
    return len(members)


def convert_dsb2018(downloads: Path, out: Path) -> None:
    """BBBC038 ``stage1_train.zip`` (``<id>/images/<id>.png``, one ``<id>/masks/*.png`` per
    nucleus) -> ``train/images/<id>.png`` (grey uint8) and ``train/masks/<id>.tif`` (uint16
    instance labels; where masks overlap the later one wins).

    Only the grey (fluorescence) images are kept, as in the shared benchmark subset: the
    colour brightfield/histology ones look nothing alike and would need their own model.
    Only the images and masks are unpacked (see :func:`extract_members`).
    """
    extracted = downloads / "stage1_train"
    extract_members(downloads / "stage1_train.zip", extracted,
                    lambda name: DSB2018_MEMBERS.fullmatch(name) is not None)
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
    # EPFL publishes no size or checksum for these files and none could be established
    # here: the download is refused until the user pins them (sha256=FILE=HEX).
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
        # The SHA-256 that several independent projects record for this archive (BBBC
        # publishes none); its exact size is not established here, so the server's
        # Content-Length is checked for the size.
        files=(Remote("https://data.broadinstitute.org/bbbc/BBBC038/stage1_train.zip",
                      "stage1_train.zip", sha256="dcb6edc2690f137406638b2309581a71522c4dff"
                      "19157d118453b448dcddcb68"),),
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


def fetch(url: str, target: Path, size: int | None = None, progress: bool = True) -> str:
    """Download ``url`` to ``target`` with a progress bar; returns the file's SHA-256 (hex).
    SegunetError if the byte count differs from ``size`` (or, when that is None, from the
    server's Content-Length), as soon as a longer download passes it."""
    from tqdm import tqdm

    try:
        response = urllib.request.urlopen(url, timeout=60)
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise SegunetError(
            f"cannot download {url}: {short_message(e)}; check the connection, or fetch the "
            "file by hand"
        ) from e
    digest = hashlib.sha256()
    with response:
        length = response.headers.get("Content-Length")
        expected = size if size is not None else (int(length) if length else None)
        got = 0
        with open(target, "wb") as f, tqdm(
            total=expected, unit="B", unit_scale=True, desc=target.name, disable=not progress
        ) as bar:
            while chunk := response.read(CHUNK):
                f.write(chunk)
                digest.update(chunk)
                got += len(chunk)
                bar.update(len(chunk))
                if expected is not None and got > expected:
                    break
    if expected is not None and got != expected:
        gave = f"more than {expected}" if got > expected else str(got)
        raise SegunetError(
            f"download of {url} gave {gave} bytes, expected {expected}: run it again "
            "(with force=true if the folder exists); if it persists the server sends another file"
        )
    return digest.hexdigest()


def check_sha256(name: str, remote: Remote, digest: str, pins: dict[str, str]) -> None:
    """One-line SegunetError unless ``digest`` is the SHA-256 pinned for ``remote`` (the
    user's ``sha256=`` pin first, then the registry's); a file without a pin is refused,
    never taken on trust."""
    expected = pins.get(remote.filename, remote.sha256)
    if expected is None:
        raise SegunetError(
            f"{name}: no SHA-256 is pinned for {remote.filename} ({remote.url}), so what the "
            f"server sent cannot be checked: it has SHA-256 {digest}; if a source you trust "
            f"confirms that, rerun with sha256={remote.filename}={digest}"
        )
    if digest != expected.lower():
        raise SegunetError(
            f"{name}: {remote.filename} from {remote.url} has SHA-256 {digest}, expected "
            f"{expected.lower()}: the server sent another file; nothing was kept, try again "
            "later or fetch the file by hand"
        )


def parse_pins(pins: Sequence[str], spec: Dataset) -> dict[str, str]:
    """``["training.tif=<hex>", ...]`` -> ``{file: hex}``, each a file of ``spec``."""
    names = [r.filename for r in spec.files]
    parsed: dict[str, str] = {}
    for pin in pins:
        file, _, digest = pin.partition("=")
        if file not in names:
            raise SegunetError(
                f"sha256={pin}: {spec.name} has no file {file!r}; give one of "
                f"{', '.join(names) or 'none'} as FILE=<64 hex digits>"
            )
        if re.fullmatch(r"[0-9a-fA-F]{64}", digest) is None:
            raise SegunetError(f"sha256={pin}: a SHA-256 is 64 hex digits, as FILE=<hex>")
        parsed[file] = digest.lower()
    return parsed


def download(
    name: str, dest: str | os.PathLike, force: bool = False, progress: bool = True,
    sha256: Sequence[str] = (),
) -> Path:
    """Fetch dataset ``name`` into ``dest/name`` atomically; returns that folder.

    Each file must have its pinned size and SHA-256 (``sha256``: ``FILE=HEX`` pins of the
    user, for files the registry has none for). An existing ``dest/name`` is replaced only
    with ``force``, and only once the new copy is complete.
    """
    if name not in REGISTRY:
        raise SegunetError(f"no dataset '{name}': choose one of {', '.join(sorted(REGISTRY))}")
    spec = REGISTRY[name]
    dest = Path(dest)
    if not spec.files or spec.convert is None:
        raise SegunetError(spec.note.format(dest=dest))
    pins = parse_pins(sha256, spec)
    target = dest / name
    if target.exists() and not force:
        raise SegunetError(f"{target} already exists: pass force=true to replace it")
    output_folder(dest, f"dest={dest}")  # a file, or not writable: one line, before fetching
    remove_stale_temps(dest)  # what killed downloads left
    # Beside the destination, so the final rename stays on one file system; named as
    # segunet.atomic names temps, so the next download can remove it if this one is killed.
    work = Path(tempfile.mkdtemp(prefix=temp_name(target), suffix=".tmp", dir=dest))
    try:
        downloads, out = work / "downloads", work / name
        downloads.mkdir()
        for remote in spec.files:
            digest = fetch(remote.url, downloads / remote.filename, remote.size, progress)
            check_sha256(name, remote, digest, pins)
        try:
            spec.convert(downloads, out)
        except SegunetError:
            raise
        except Exception as e:
            raise SegunetError(
                f"cannot convert the downloaded {name}: {short_message(e)}; run it again"
            ) from e
        if target.exists():  # force: swap, so the old copy goes only once the new is in
            old = work / "old"
            os.replace(target, old)
        os.replace(out, target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target
