"""Reading and writing image arrays: TIFF, PNG/JPEG/BMP, HDF5, zarr and ``.npy``.

Every failure a user can cause (a wrong path, an unsupported type, a corrupt or empty file) is
a :class:`SegunetError` of one line naming the file and what to do. Writes are atomic: the
array goes to a temporary path beside the target, which is renamed into place only once
complete, so a crash never leaves a half-written file behind.

Containers (HDF5, zarr) hold several arrays; config strings name one as ``path.h5:key``.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import numpy as np

from segunet.atomic import temp_name
from segunet.data.pixelsize import PixelSize, from_element_size, from_tiff, tiff_options
from segunet.errors import SegunetError, short_message

TIFF = (".tif", ".tiff")
PICTURE = (".png", ".jpg", ".jpeg", ".bmp")
HDF5 = (".h5", ".hdf5", ".hdf")
ZARR = (".zarr",)
NPY = (".npy",)
SUPPORTED = TIFF + PICTURE + HDF5 + ZARR + NPY
#: What ``segunet predict`` writes of each input: ``<stem>_<output>.<ext>``, or one
#: ``<stem>.ome.zarr`` holding them all; ``segunet evaluate`` reads them back by these names.
PREDICT_OUTPUTS = ("probabilities", "labels", "instances")

#: Above this many bytes a TIFF is written as BigTIFF (classic TIFF offsets are 32-bit; keep
#: headroom below 4 GiB for the compressed data's worst case and the metadata).
BIGTIFF_BYTES = 2**31

_ZARR_MARKERS = ("zarr.json", ".zarray", ".zgroup")


def split_key(path: str | os.PathLike, key: str | None = None) -> tuple[Path, str | None]:
    """``("vol.h5:raw", None) -> (Path("vol.h5"), "raw")``: split a config string on its last
    ':' when the part before it exists and the whole string does not (so a file whose name
    holds ':' still reads as itself). An explicit ``key`` wins over one in the string."""
    text = os.fspath(path)
    head, sep, tail = text.rpartition(":")
    if sep and head and tail and not Path(text).exists() and Path(head).exists():
        return Path(head), key if key is not None else tail
    return Path(text), key


def file_kind(path: Path) -> str:
    """One of ``tiff``, ``picture``, ``hdf5``, ``zarr``, ``npy`` by extension (a folder with
    zarr metadata is zarr whatever its name); SegunetError listing the supported ones else."""
    ext = path.suffix.lower()
    if ext in ZARR or (path.is_dir() and any((path / m).exists() for m in _ZARR_MARKERS)):
        return "zarr"
    for kind, exts in (("tiff", TIFF), ("picture", PICTURE), ("hdf5", HDF5), ("npy", NPY)):
        if ext in exts:
            return kind
    raise SegunetError(
        f"cannot read {path}: unsupported file type '{ext or path.name}'; "
        f"use one of {', '.join(SUPPORTED)}"
    )


def read_array(path: str | os.PathLike, key: str | None = None) -> np.ndarray:
    """The array stored at ``path`` (``key``: the dataset inside an HDF5 file or zarr group).

    TIFF: the first series, so a multi-page stack reads as ``(Z, Y, X)`` (compressed and
    BigTIFF files too, through imagecodecs). PNG/JPEG/BMP: ``(H, W)`` grey or ``(H, W, 3|4)``
    colour, as stored. HDF5/zarr: ``key``, or the container's only array when ``key`` is None.
    """
    path, key = split_key(path, key)
    if not path.exists():
        raise SegunetError(
            f"cannot read {path}: no such file (relative paths start at {Path.cwd()}); "
            "check the path"
        )
    kind = file_kind(path)
    if path.is_file() and path.stat().st_size == 0:
        raise SegunetError(f"cannot read {path}: the file is empty (0 bytes); replace it")
    with _library_errors(path, "read"):
        array = _READERS[kind](path, key)
    if array.size == 0:
        raise SegunetError(
            f"cannot use {path}{f':{key}' if key else ''}: the array is empty "
            f"(shape {array.shape}); replace it"
        )
    return array


def write_array(
    path: str | os.PathLike, array: np.ndarray, key: str | None = None,
    pixel_size: PixelSize | None = None,
) -> Path:
    """Write ``array`` to ``path`` atomically, its format chosen by the extension.

    TIFF is zlib-compressed (BigTIFF beyond :data:`BIGTIFF_BYTES`; ``(H, W, 3|4)`` is written
    as RGB). HDF5 and zarr store it at ``key``, replacing any array of that name and keeping
    the container's other arrays; without a key HDF5 uses ``data`` and zarr makes (or
    replaces) the store as a single array. ``path.h5:key`` works as in :func:`read_array`,
    also for a container not yet written. ``pixel_size`` (um per spatial axis) goes into
    TIFF resolution tags (:func:`~segunet.data.pixelsize.tiff_options`) and HDF5's
    ``element_size_um``; the other formats have no place for it. Returns the path written.
    """
    text = os.fspath(path)
    head, sep, tail = text.rpartition(":")
    if key is None and sep and head and tail and Path(head).suffix.lower() in HDF5 + ZARR:
        target, key = Path(head), tail
    else:
        target = Path(text)
    kind = file_kind(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with _library_errors(target, "write"):
        _WRITERS[kind](target, np.asarray(array), key, pixel_size)
    return target


def read_pixel_size(path: str | os.PathLike, key: str | None = None) -> PixelSize | None:
    """The pixel size (um per spatial axis, slowest first) that the file at ``path``
    records, or None (see :mod:`segunet.data.pixelsize`); ``key``: the HDF5 dataset, or
    the OME-Zarr resolution level."""
    path, key = split_key(path, key)
    kind = file_kind(path)
    with _library_errors(path, "read"):
        if kind == "tiff":
            return from_tiff(path)
        if kind == "hdf5":
            import h5py

            with h5py.File(path, "r") as f:
                dataset = f[pick_key(path, key, hdf5_datasets(f))]
                return from_element_size(dataset.attrs.get("element_size_um"))
        if kind == "zarr":
            from segunet.data import omezarr

            return omezarr.open_image(path, key).pixel_size if omezarr.is_ome_zarr(path) else None
    return None


class CheckedReads:
    """A lazily read array (memmap, zarr) whose reads fail as :func:`read_array`'s do: a
    truncated or corrupt file is noticed only when its broken part is read, and a
    decompressor's own error (``DeflateError``) would not say which file it was."""

    def __init__(self, array: Any, path: Path) -> None:
        self.array, self.path = array, path
        self.shape, self.ndim, self.dtype = tuple(array.shape), array.ndim, array.dtype

    def __getitem__(self, index: Any) -> np.ndarray:
        with _library_errors(self.path, "read"):
            try:
                return np.asarray(self.array[index])
            except Exception:
                finish_zarr_io()  # zarr's reads of the other broken chunks: no noise at exit
                raise

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        return self[...] if dtype is None else self[...].astype(dtype)


# --- readers -------------------------------------------------------------------------------


def _read_tiff(path: Path, key: str | None) -> np.ndarray:
    import tifffile

    return np.asarray(tifffile.imread(path))


def _read_picture(path: Path, key: str | None) -> np.ndarray:
    import imageio.v3 as iio

    return np.asarray(iio.imread(path))


def _read_npy(path: Path, key: str | None) -> np.ndarray:
    # No pickles: a data file must not be able to run code.
    return np.load(path, allow_pickle=False)


def _read_hdf5(path: Path, key: str | None) -> np.ndarray:
    import h5py

    with h5py.File(path, "r") as f:
        return np.asarray(f[pick_key(path, key, hdf5_datasets(f))][()])


def hdf5_datasets(f: Any) -> list[str]:
    """The paths of every dataset in an open HDF5 file."""
    import h5py

    names: list[str] = []

    def collect(name: str, obj: object) -> None:  # returning non-None would stop the visit
        if isinstance(obj, h5py.Dataset):
            names.append(name)

    f.visititems(collect)
    return names


def _read_zarr(path: Path, key: str | None) -> np.ndarray:
    import zarr

    from segunet.data import omezarr

    if omezarr.is_ome_zarr(path):  # key: the resolution level
        return np.asarray(omezarr.open_image(path, key).array[...])
    node = zarr.open(store=str(path), mode="r")
    if isinstance(node, zarr.Array):
        if key:
            raise SegunetError(f"cannot read {path}:{key}: {path} is a single array; drop ':{key}'")
        return np.asarray(node[...])
    names = [name for name, obj in node.members(max_depth=None) if isinstance(obj, zarr.Array)]
    return np.asarray(node[pick_key(path, key, sorted(names))][...])


def pick_key(path: Path, key: str | None, names: list[str]) -> str:
    """``key`` if the container holds it, else its only array; one-line errors otherwise."""
    listing = ", ".join(names[:10]) + (", ..." if len(names) > 10 else "")
    if key is not None:
        if key.strip("/") in names:
            return key.strip("/")
        raise SegunetError(
            f"{path} has no array '{key}'; it holds: {listing or 'none'}; name one as {path}:<key>"
        )
    if len(names) == 1:
        return names[0]
    if not names:
        raise SegunetError(f"cannot read {path}: it holds no arrays; replace it")
    raise SegunetError(
        f"{path} holds {len(names)} arrays ({listing}): name one, e.g. {path}:{names[0]}"
    )


_READERS = {
    "tiff": _read_tiff, "picture": _read_picture, "hdf5": _read_hdf5,
    "zarr": _read_zarr, "npy": _read_npy,
}


# --- writers -------------------------------------------------------------------------------


def temp_path(path: Path) -> Path:
    """A fresh hidden name beside ``path`` (so the final rename stays on one file system)
    that records its writer, as :mod:`segunet.atomic` names temps: the next run into the
    folder can tell a killed writer's temp from a live one's
    (:func:`segunet.atomic.remove_stale_temps`)."""
    return path.with_name(f"{temp_name(path)}{uuid.uuid4().hex[:8]}.tmp")


def output_folder(folder: Path, setting: str) -> Path:
    """Create ``folder`` if needed and check that files can be made in it, before any long
    work; one-line SegunetErrors that start with the user's ``setting`` (``output=...``)."""
    blocker = next((p for p in (folder, *folder.parents) if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise SegunetError(f"{setting}: {blocker} is a file, not a folder; give a folder")
    probe = temp_path(folder / "probe")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe.touch(exist_ok=False)
        probe.unlink(missing_ok=True)  # a stale-temp sweep may have beaten us to it
    except OSError as e:
        what = f"{folder} is not writable" if folder.is_dir() else f"cannot create {folder}"
        raise SegunetError(
            f"{setting}: {what} ({e.strerror or short_message(e)}); choose a folder you can "
            "write to"
        ) from e
    return folder


def refuse_existing(path: Path, overwrite: bool, alternative: str = "") -> None:
    """The one rule of every command's outputs: an existing one is kept unless overwrite."""
    if path.exists() and not overwrite:
        raise SegunetError(
            f"output {path} exists: pass overwrite=true to replace it{alternative}, or choose "
            "another output"
        )


@contextmanager
def atomic_path(path: Path, beside: Path | None = None) -> Iterator[Path]:
    """Yield a temporary path (next to ``beside``, default ``path``) to write; move it onto
    ``path`` on success, remove it on error.

    A file is replaced in one ``os.replace``. A folder (zarr) cannot be: the old one is
    renamed aside first, so at any moment ``path`` is either absent, old or complete.
    """
    tmp = temp_path(beside or path)
    try:
        yield tmp
        if tmp.is_dir() and path.exists():
            old = temp_path(path)
            os.replace(path, old)
            os.replace(tmp, path)
            _remove(old)
        else:
            os.replace(tmp, path)
    except BaseException:
        finish_zarr_io()
        raise
    finally:
        _remove(tmp)


def finish_zarr_io(timeout: float = 60.0) -> None:
    """Wait for the reads and writes zarr's I/O thread still runs. Ctrl-C stops the main
    thread's wait for a zarr write, not the write: it would land in a temp store after its
    removal (and asyncio would complain at exit of a task left pending)."""
    import asyncio
    import sys

    sync = sys.modules.get("zarr.core.sync")
    loop = getattr(sync, "loop", [None])[0]  # zarr 3's I/O loop, if it was started
    if loop is None or not loop.is_running():
        return

    async def others() -> None:
        tasks = asyncio.all_tasks() - {asyncio.current_task()}
        await asyncio.gather(*tasks, return_exceptions=True)

    with suppress(Exception):  # best effort: a stuck write must not hang the clean-up
        asyncio.run_coroutine_threadsafe(others(), loop).result(timeout)


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists():
        path.unlink()


def _write_tiff(path: Path, array: np.ndarray, key: str | None, pixel_size: PixelSize | None
                ) -> None:
    import tifffile

    rgb = array.ndim == 3 and array.shape[-1] in (3, 4)
    with atomic_path(path) as tmp:
        tifffile.imwrite(
            tmp, array, compression="zlib", bigtiff=array.nbytes > BIGTIFF_BYTES,
            photometric="rgb" if rgb else "minisblack", **tiff_options(pixel_size),
        )


def _write_picture(path: Path, array: np.ndarray, key: str | None, _: object) -> None:
    import imageio.v3 as iio

    with atomic_path(path) as tmp:
        iio.imwrite(tmp, array, extension=path.suffix)  # the temp's name ends in .tmp


def _write_npy(path: Path, array: np.ndarray, key: str | None, _: object) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, array, allow_pickle=False)


def _write_hdf5(path: Path, array: np.ndarray, key: str | None, pixel_size: PixelSize | None
                ) -> None:
    import h5py

    key = (key or "data").strip("/")
    with atomic_path(path) as tmp:
        if path.exists():  # keep the other datasets: edit a copy, never the original
            shutil.copy2(path, tmp)
        with h5py.File(tmp, "a") as f:
            if key in f:
                del f[key]
            dataset = f.create_dataset(key, data=array, compression="gzip" if array.ndim else None)
            if pixel_size is not None:
                dataset.attrs["element_size_um"] = np.asarray(pixel_size, np.float64)


def _write_zarr(path: Path, array: np.ndarray, key: str | None, _: object) -> None:
    import zarr

    if not key:
        with atomic_path(path) as tmp:
            zarr.create_array(store=str(tmp), data=array)
        return
    key = key.strip("/")
    if not path.exists():
        with atomic_path(path) as tmp:
            zarr.open_group(store=str(tmp), mode="w").create_array(key, data=array)
        return
    # Into an existing group: write the array on its own beside the store, then move its
    # folder into place (an array's metadata lives in its own folder, so the move makes it
    # part of the group, and a crash leaves nothing inside the store).
    group = zarr.open_group(store=str(path), mode="a")
    parent = key.rpartition("/")[0]
    if parent:
        group.require_group(parent)
    with atomic_path(path / key, beside=path) as tmp:
        zarr.create_array(store=str(tmp), data=array, zarr_format=group.metadata.zarr_format)


_WRITERS = {
    "tiff": _write_tiff, "picture": _write_picture, "hdf5": _write_hdf5,
    "zarr": _write_zarr, "npy": _write_npy,
}


@contextmanager
def _library_errors(path: Path, verb: str) -> Iterator[None]:
    """Turn a library's exception into one line naming the file; ours pass through."""
    try:
        yield
    except (SegunetError, MemoryError):
        raise
    except Exception as e:
        raise SegunetError(
            f"cannot {verb} {path}: {short_message(e)}; "
            + ("the file may be corrupt or truncated: re-export or re-download it"
               if verb == "read" else "check the folder is writable and has space")
        ) from e
