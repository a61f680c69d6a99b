"""``segunet predict ... dask.workers=N`` (or ``dask.scheduler=<address>``): a batch
spread over the workers of a Dask cluster, on an engine users already run (a
``distributed.LocalCluster`` here; ``dask-jobqueue`` puts one on SLURM, PBS or LSF). Two
kinds of parallelism (``dask.split``):

- ``images``: each task predicts one image with :func:`segunet.infer.run.predict_file`,
  reading it and writing its outputs in place (atomically, as without Dask) on storage the
  workers share. What a worker prints (a resampling note, its progress bars) comes back to
  the console with its image when the task is done.
- ``blocks``, for images larger than one worker can predict fast enough (``format=zarr``
  or ``ome-zarr``): this process opens the image and its outputs and hands out the parts:
  boxes to predict (:func:`predict_box`), bands of labels, and the blocks of the
  instances to decode and renumber (:mod:`segunet.postprocess.streamed`), whose stitching
  it does itself. Every part reads and writes whole chunks of the stores in place.

Either way only paths, zarr array handles and short results cross the scheduler; each
worker process loads the model once; a worker that dies loses its task, which Dask runs
again elsewhere; a failure stops the batch with the line that says how to continue it
(``skip_existing=true``), as without Dask; and the files written equal those of one
process with as many torch threads as a worker.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import io
import itertools
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from segunet.config.args import option
from segunet.errors import SegunetError

MISSING = ("dask.workers and dask.scheduler need Dask's distributed scheduler: "
           "pip install 'segunet[dask]'")
#: How long to wait for dask.scheduler to answer.
CONNECT_TIMEOUT = "10s"
#: How often Dask runs a task again whose worker died.
RETRIES = 2


@dataclasses.dataclass
class DaskConfig:
    """``dask.*``: where ``segunet predict`` runs its images."""

    workers: int = option(0, "start a local Dask cluster of this many worker processes, "
                          "each predicting whole images (0: no Dask)")
    threads: int = option(1, "torch threads per worker (workers x threads <= the cores)")
    scheduler: str | None = option(
        None, "the address of a running Dask scheduler (tcp://host:8786) to use instead")
    split: Literal["auto", "images", "blocks"] = option(
        "auto", "images: a task per image; blocks: the bands and blocks of each image over "
        "the workers (format=zarr or ome-zarr); auto: blocks for fewer images than workers")

    def __post_init__(self) -> None:
        from segunet.config.args import check_range

        check_range("dask.workers", self.workers, self.workers >= 0, "a whole number >= 0")
        check_range("dask.threads", self.threads, self.threads >= 1, "a whole number >= 1")
        if self.workers and self.scheduler:
            raise SegunetError("dask.workers and dask.scheduler contradict each other: start "
                               "a local cluster, or use the running one")

    @property
    def wanted(self) -> bool:
        return bool(self.workers or self.scheduler)


@contextlib.contextmanager
def client_for(config: DaskConfig) -> Iterator[Any]:
    """A ``distributed.Client`` of a new local cluster or of ``dask.scheduler``, closed with
    its cluster at the end; one line where distributed is not installed."""
    try:
        import distributed
    except ImportError:
        raise SegunetError(MISSING) from None
    if config.scheduler:
        try:
            client = distributed.Client(config.scheduler, timeout=CONNECT_TIMEOUT)
        except OSError as e:
            raise SegunetError(
                f"dask.scheduler={config.scheduler}: no Dask scheduler answered there "
                f"({type(e).__name__}); start one (dask scheduler) or give dask.workers=N "
                "for a local cluster") from None
        with client:
            yield client
        return
    cluster = distributed.LocalCluster(n_workers=config.workers, threads_per_worker=1,
                                       processes=True, dashboard_address=":0", silence_logs=50)
    with cluster, distributed.Client(cluster) as client:
        yield client


def predict_on_cluster(
    todo: dict[Path, dict[str, Path]], checkpoint: str, device: str, prediction: Any,
    config: DaskConfig, predict_file: Callable[..., list[Path]],
    predict_blocks: Callable[[Workers], list[Path]],
) -> list[Path]:
    """Predict the inputs of ``todo`` on the cluster: each as a task, by ``predict_file``
    (that of :mod:`segunet.infer.run`, passed by reference), or one after another by
    ``predict_blocks`` with their parts on the workers (``dask.split``); returns the files
    written, in the order of ``todo``."""
    with client_for(config) as client:
        link = getattr(client, "dashboard_link", None)
        workers = len(client.scheduler_info().get("workers", {}))
        blocks = prediction.format != "tif" and (config.split == "blocks" or (
            config.split == "auto" and len(todo) < workers))
        what = (f"the blocks of {len(todo)} image{'s' * (len(todo) != 1)}" if blocks
                else f"{len(todo)} images")
        print(f"segunet: Dask: {what} on {workers} worker{'s' * (workers != 1)}"
              + (f"; dashboard {link}" if link else ""), file=sys.stderr)
        if blocks:
            return predict_blocks(Workers(client, checkpoint, device, config.threads))
        futures = {
            client.submit(predict_task, predict_file, path, targets, checkpoint, device,
                          prediction, config.threads, key=f"segunet-predict-{i}",
                          retries=RETRIES): path
            for i, (path, targets) in enumerate(todo.items())
        }
        return _gather(client, futures, todo)


def _gather(client: Any, futures: dict[Any, Path], todo: dict[Path, Any]) -> list[Path]:
    from distributed import as_completed
    from tqdm import tqdm

    written: dict[Path, list[Path]] = {}
    bar = tqdm(total=len(futures), unit="image", desc="predict (Dask)")
    try:
        for future in as_completed(futures):
            path = futures[future]
            try:
                files, said = future.result()
            except SegunetError as e:
                client.cancel(list(futures))
                raise SegunetError(
                    f"{e} ({len(written)} of {len(todo)} images done; rerun with "
                    "skip_existing=true to predict the rest)") from None
            written[path] = files
            for line in said.strip().splitlines():
                if line.startswith("segunet: "):
                    bar.write(line, file=sys.stderr)
            bar.update(1)
    except KeyboardInterrupt:
        client.cancel(list(futures))
        raise SegunetError(
            f"interrupted ({len(written)} of {len(todo)} images done): rerun with "
            "skip_existing=true to predict the rest") from None
    finally:
        bar.close()
    return [f for path in todo for f in written.get(path, [])]


def predict_task(predict_file: Callable[..., list[Path]], path: Path,
                 targets: dict[str, Path], checkpoint: str, device: str, prediction: Any,
                 threads: int) -> tuple[list[Path], str]:
    """On a worker: predict one image with the worker's model; the files written and what
    the prediction printed."""
    import torch

    torch.set_num_threads(threads)
    trained = _model(checkpoint, device)
    said = io.StringIO()
    with contextlib.redirect_stderr(said):
        files = predict_file(trained.model, trained.config, path, targets, prediction)
    return files, said.getvalue()


@dataclasses.dataclass
class Workers:
    """The workers of a cluster, for the parts of one image; :meth:`map` is a
    :data:`segunet.postprocess.streamed.Map`."""

    client: Any
    checkpoint: str
    device: str
    threads: int

    def map(self, task: Callable[..., Any], items: Sequence[Any], description: str,
            progress: bool = False, **shared: Any) -> Iterator[tuple[int, Any]]:
        """``task(item, **shared)`` for each item as a task on the workers, each retried
        where its worker dies; ``(index, result)`` as they finish, with a progress bar."""
        from distributed import as_completed
        from tqdm import tqdm

        name = f"segunet-{description}-{next(_batches)}"
        futures = self.client.map(
            _on_worker, items, task=task, threads=self.threads, key=[
                f"{name}-{i}" for i in range(len(items))], retries=RETRIES, pure=False,
            **shared)
        index = {future.key: i for i, future in enumerate(futures)}
        bar = tqdm(total=len(items), unit="part", desc=f"{description} (Dask)",
                   disable=not progress)
        started = time.perf_counter()
        try:
            for future in as_completed(futures):
                result = future.result()
                future.release()
                bar.update(1)
                yield index[future.key], result
        finally:
            self.client.cancel(futures)
            bar.close()
        # Where the time goes: the parts on the workers, the rest here.
        print(f"segunet: Dask: {description}: {len(items)} parts in "
              f"{time.perf_counter() - started:.1f} s", file=sys.stderr)

    @property
    def count(self) -> int:
        return max(1, len(self.client.scheduler_info().get("workers", {})))


_batches = itertools.count()


def _on_worker(item: Any, task: Callable[..., Any], threads: int, **shared: Any) -> Any:
    import torch

    torch.set_num_threads(threads)
    return task(item, **shared)


def predict_box(box: tuple[tuple[int, int], ...], checkpoint: str, device: str, image: Any,
                grid: Any, out: Any, tiling: dict[str, Any]) -> int:
    """On a worker: predict the output ``box`` of ``image`` (a detached
    :class:`~segunet.infer.inputs.NormalizedImage`, reopened here) on ``grid`` into
    ``out`` with the worker's model; how many of its probabilities are not finite."""
    from segunet.infer.inputs import non_finite, open_array
    from segunet.infer.predict import predict_tiled

    trained = _model(checkpoint, device)
    with contextlib.ExitStack() as stack:
        raw = open_array(Path(image.source), stack)
        predict_tiled(trained.model, grid.to_model(image.attached(raw)), out=out, box=box,
                      **tiling)
    (top, bottom), *rest = box
    chunk = out.chunks[1]
    return sum(non_finite(np.asarray(out[(slice(None), slice(a, min(a + chunk, bottom)),
                                          *(slice(*r) for r in rest))]))
               for a in range(top, bottom, chunk))


def argmax_band(rows: slice, probs: Any, out: Any) -> None:
    """On a worker: the labels of ``rows``."""
    from segunet.postprocess.decoding import argmax_of

    out[rows] = argmax_of(np.asarray(probs[:, rows]), rows.stop - rows.start)


@functools.lru_cache(maxsize=1)
def _model(checkpoint: str, device: str) -> Any:
    """The worker's model, loaded by its first task."""
    from segunet.checkpoint import load_trained

    return load_trained(checkpoint, device)
