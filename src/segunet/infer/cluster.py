"""``segunet predict ... dask.workers=N`` (or ``dask.scheduler=<address>``): the images of a
batch spread over the workers of a Dask cluster, on an engine users already run (a
``distributed.LocalCluster`` here; ``dask-jobqueue`` puts one on SLURM, PBS or LSF).

Each task predicts one image with :func:`segunet.infer.run.predict_file`, reading it and
writing its outputs in place (atomically, as without Dask) on storage the workers share:
only paths and short reports cross the scheduler. Each worker process loads the model
once. A worker that dies loses its task, which Dask runs again elsewhere; a failed image
stops the batch with the line that says how to continue it (``skip_existing=true``), as
without Dask. What a worker prints (a resampling note, its progress bars) comes back to
the console with its image when the task is done.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import io
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

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
) -> list[Path]:
    """Predict each input of ``todo`` as a task on the cluster, by ``predict_file`` (that of
    :mod:`segunet.infer.run`, passed by reference); returns the files written, in the order
    of ``todo``."""
    with client_for(config) as client:
        link = getattr(client, "dashboard_link", None)
        workers = len(client.scheduler_info().get("workers", {}))
        print(f"segunet: Dask: {len(todo)} images on {workers} worker"
              f"{'s' * (workers != 1)}" + (f"; dashboard {link}" if link else ""),
              file=sys.stderr)
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


@functools.lru_cache(maxsize=1)
def _model(checkpoint: str, device: str) -> Any:
    """The worker's model, loaded by its first task."""
    from segunet.checkpoint import load_trained

    return load_trained(checkpoint, device)
