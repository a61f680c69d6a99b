"""Training: ``segunet train [overrides]`` (a Hydra app; also ``python -m segunet.train``).

The loop is deliberately plain: ``fit`` draws batches, ``train_step`` does one optimiser step
under whatever autocast context the precision asks for, ``validate`` runs the overlap-tile
prediction over whole validation images, and checkpoints are written atomically.
"""

from __future__ import annotations

import copy
import functools
import math
import random
import signal
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from segunet import interrupts
from segunet.checkpoint import (
    clean_state_dict,
    init_weights,
    load_checkpoint,
    mismatch_detail,
    pixel_size_record,
    resolve_checkpoint,
    rng_state,
    save_atomic,
    set_rng_state,
)
from segunet.config.compose import (
    check_all_targets,
    check_config,
    instantiate_group,
    upgrade,
)
from segunet.config.schema import Range, check_ranges
from segunet.data.augment import AugmentConfig, Augmenter
from segunet.data.datasets import (
    PatchDataset,
    SegmentationData,
    StepSampler,
    crop_to_output,
    cut_sample,
    to_tensors,
)
from segunet.data.tiling import tile_within
from segunet.errors import SegunetError, first_line
from segunet.eval.metrics import OverlapCounter, TaskScorer, metric_key
from segunet.infer.predict import predict_tiled
from segunet.models.device import resolve_device
from segunet.postprocess.decoding import PostProcess, decode
from segunet.postprocess.tune import TuneConfig, describe_tuned, report, tunable, tune_on
from segunet.train import distributed, resume, run_folder
from segunet.train.logger import LoggingConfig, TensorBoardLogger, classes_picture, panel

#: fp16's GradScaler skips a step whose gradients overflowed and lowers its scale: a skipped
#: step now and then is how it finds the scale; this many in a row, the run has diverged.
MAX_SKIPPED_STEPS = 10


@dataclass
class TrainerConfig:
    """The ``trainer`` config group."""

    max_steps: Annotated[int, Range(ge=1)] = 2000
    batch_size: Annotated[int, Range(ge=1)] = 4
    val_every: Annotated[int, Range(ge=1)] = 200
    seed: Annotated[int, Range(ge=0)] = 0  # numpy's generators take no negative seed
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"  # auto: bf16 on CUDA, else fp32
    channels_last: bool = True  # CUDA only
    num_workers: Annotated[int, Range(ge=0)] = 0
    grad_clip: Annotated[float, Range(gt=0)] | None = None  # the norm's limit: 0 or less flips
    resume: str | None = None
    # Fine-tuning: the weights of a checkpoint or of a model that ships with segunet (nuclei)
    # to start from, with a new optimiser and schedule; an output layer of other classes is
    # re-initialised.
    init_from: str | None = None
    compile: bool | Literal["auto"] = "auto"  # auto: on for CUDA, off for CPU
    # processes (one per GPU) that `segunet train` launches through torchrun
    devices: Annotated[int, Range(ge=1)] = 1
    sync_batchnorm: bool = False  # BatchNorm statistics over the global batch (CUDA, DDP only)

    def __post_init__(self) -> None:
        check_ranges(self, "trainer")
        if self.resume and self.init_from:
            raise SegunetError(
                "trainer.resume continues a run, trainer.init_from starts a new one from "
                "another's weights: give one of them"
            )


def resolve_compile(value: bool | str, device: torch.device) -> bool:
    """``trainer.compile``: ``auto`` compiles on CUDA only (on the CPU compiling costs more
    time than a short run saves)."""
    return device.type == "cuda" if value == "auto" else bool(value)


def resolve_precision(name: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for full fp32."""
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else None
    table = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
    if name not in table:
        raise SegunetError(f"trainer.precision={name} is unknown: use auto, fp32, bf16 or fp16")
    if table[name] is torch.float16 and device.type != "cuda":
        raise SegunetError("trainer.precision=fp16 needs CUDA: use fp32 or bf16 on the CPU")
    return table[name]


def sync_batchnorm(cfg: TrainerConfig, device: torch.device, world_size: int) -> bool:
    """Whether BatchNorm statistics sync across the processes: ``trainer.sync_batchnorm``
    under DDP; PyTorch's SyncBatchNorm runs on CUDA only."""
    if not (cfg.sync_batchnorm and world_size > 1):
        return False
    if device.type != "cuda":
        raise SegunetError("trainer.sync_batchnorm=true needs CUDA: set it false on the CPU")
    return True


def check_launch(cfg: DictConfig, world_size: int) -> None:
    """The checks of the ``trainer`` settings each of ``world_size`` processes would make,
    made before launching them, so a bad setting stops as one line and no processes."""
    trainer_cfg: TrainerConfig = instantiate_group(cfg, "trainer")
    distributed.check_device(trainer_cfg.device, world_size)
    rank = 0 if world_size > 1 else None
    device = resolve_device(trainer_cfg.device, "trainer.device", rank)
    if trainer_cfg.precision != "auto":  # auto never fails, and would query the GPU here
        resolve_precision(trainer_cfg.precision, device)
    sync_batchnorm(trainer_cfg, device, world_size)


def resolve_patch_size(model: nn.Module, data: SegmentationData) -> tuple[int, ...]:
    """The network input size: ``data.patch_size`` checked against the model, or a default
    that fits the smallest training image (capped at the paper's 572 / 3D U-Net's 132)."""
    dims = data.spatial_dims
    if data.patch_size is None:
        smallest = np.min([v.spatial_shape for v in data.train], axis=0)
        cap = 572 if dims == 2 else 132
        return tuple(model.valid_input_shape([min(int(s), cap) for s in smallest]))
    patch = tuple(int(p) for p in data.patch_size)
    if len(patch) != dims:
        raise SegunetError(
            f"data.patch_size={list(patch)} has {len(patch)} axes but the images are {dims}D"
        )
    try:
        model.output_shape(patch)
    except ValueError as e:
        raise SegunetError(f"data.patch_size={list(patch)} does not fit the model: {e}") from e
    return patch


def validation_tile(
    model: nn.Module, data: SegmentationData, patch: Sequence[int], batch_size: int
) -> tuple[tuple[int, ...], int]:
    """Input tile and tiles per batch for validation.

    A valid U-Net's result does not depend on the tile (attention gates see tile borders:
    larger tiles only bring them closer to one whole pass), so it gets the predictor's
    default tile for the largest validation image (few large tiles rather than many small
    ones that recompute their context: a small patch's output may be a few pixels), cut to
    the pixels of one training batch: a forward pass that keeps no activations for a
    backward pass needs less memory than the training step. One tile for all images: a
    compiled net compiles once. A same net's blend depends on the tile: it keeps the patch.
    """
    if model.padding != "valid":
        return tuple(patch), batch_size
    budget = batch_size * math.prod(patch)
    largest = np.max([v.spatial_shape for v in data.val], axis=0)
    tile = tile_within(model, [int(n) for n in largest], budget)
    return tile, max(1, budget // math.prod(tile))


class Divergence:
    """Steps whose loss or gradients are not finite, counted on the device (no host sync per
    step): the step at which ``limit`` of them came in a row, or 0 while none did."""

    def __init__(self, device: torch.device, limit: int) -> None:
        self.limit = limit
        self.in_a_row = torch.zeros((), dtype=torch.int64, device=device)
        self.first = torch.zeros((), dtype=torch.int64, device=device)

    def update(self, finite: torch.Tensor, step: int) -> None:
        self.in_a_row = torch.where(finite, 0, self.in_a_row + 1)
        self.first = torch.where((self.in_a_row >= self.limit) & (self.first == 0), step,
                                 self.first)

    def step(self) -> int:
        """The step it diverged at, or 0 (a host sync)."""
        return int(self.first)


def grad_norm(parameters: Sequence[nn.Parameter]) -> torch.Tensor:
    """The total 2-norm of the gradients (finite unless one of them is not)."""
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return torch.zeros(())
    if hasattr(nn.utils, "get_total_norm"):  # torch >= 2.6: one fused pass
        return nn.utils.get_total_norm(grads)
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))


def check_compatible(model: nn.Module, data: SegmentationData) -> None:
    """Model and data must agree before any compute is spent; say which setting to change."""
    name = data.name
    if model.spatial_dims != data.spatial_dims:
        fix = "data=synthetic3d" if model.spatial_dims == 3 else "a 3D model (model=unet3d)"
        raise SegunetError(
            f"model.spatial_dims={model.spatial_dims} but data '{name}' has "
            f"{data.spatial_dims}D images: use {fix} or set model.spatial_dims={data.spatial_dims}"
        )
    if model.in_channels != data.in_channels:
        raise SegunetError(
            f"model.in_channels={model.in_channels} but data '{name}' has {data.in_channels}-"
            f"channel images: set model.in_channels={data.in_channels}"
        )
    if model.out_channels < data.num_classes:
        raise SegunetError(
            f"model.out_channels={model.out_channels} but data '{name}' has "
            f"{data.num_classes} classes: set model.out_channels={data.num_classes}"
        )
    if not any((v.label[~v.ignore] > 0).any() for v in data.train):
        # A net trained on background alone predicts nothing and still scores "done".
        raise SegunetError(
            f"the labels of the {len(data.train)} training images of data '{name}' hold no "
            "foreground (every pixel is background or ignored): check the label files, "
            "data.targets.label_kind and data.targets.foreground_value"
        )


class Trainer:
    """Wires model, data, loss and optimiser; owns the loop, validation and checkpoints."""

    def __init__(
        self,
        model: nn.Module,
        data: SegmentationData,
        criterion: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        cfg: TrainerConfig,
        log: LoggingConfig,
        run_dir: Path,
        config: dict[str, Any] | None = None,
        augment: AugmentConfig | None = None,
        tune: TuneConfig | None = None,
    ) -> None:
        check_compatible(model, data)
        self.cfg, self.log_cfg, self.data = cfg, log, data
        self.run_dir = Path(run_dir)
        self.config = config or {}
        if isinstance(self.config.get("data"), dict) and data.pixel_size is not None:
            # What the data source found in the files, for whoever reads the checkpoint.
            self.config["data"]["pixel_size"] = list(data.pixel_size)
        self.world = distributed.world()
        local_rank = self.world.local_rank if self.world.size > 1 else None
        self.device = resolve_device(cfg.device, "trainer.device", local_rank)
        self.amp_dtype = resolve_precision(cfg.precision, self.device)
        if self.device.type == "cuda":
            # Patches have one fixed size, so cuDNN's autotuning is paid once and then wins.
            torch.backends.cudnn.benchmark = True
        self.scaler = torch.amp.GradScaler(
            self.device.type, enabled=self.amp_dtype is torch.float16
        )
        self.divergence = Divergence(
            self.device, MAX_SKIPPED_STEPS if self.scaler.is_enabled() else 1
        )
        self.last_good: tuple[Path, int] | None = None  # the newest last.pt, and its step
        # Called once, just before the first checkpoint this process writes (rank 0).
        self.before_first_save: Callable[[], None] | None = None
        self.start_step = 0  # where this process's training began (fit)
        self.in_shape = resolve_patch_size(model, data)
        self.out_shape = tuple(model.output_shape(self.in_shape))
        # Plain contiguous unless channels_last: augmentation can hand back a strided view,
        # and .contiguous() refuses preserve_format.
        self.memory_format = torch.contiguous_format
        if cfg.channels_last and self.device.type == "cuda":
            self.memory_format = (
                torch.channels_last if data.spatial_dims == 2 else torch.channels_last_3d
            )
        if sync_batchnorm(cfg, self.device, self.world.size):
            # Keeps the very Parameter objects, so the optimiser built on them stays valid.
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        self.net = model.to(self.device, memory_format=self.memory_format)
        self._wrap_model()
        self.criterion, self.optimizer, self.scheduler = criterion, optimizer, scheduler
        self.augment_cfg = augment if augment is not None and augment.enabled else None
        if self.augment_cfg and self.augment_cfg.device == "cuda" and self.device.type != "cuda":
            raise SegunetError(
                f"augment.device=cuda but training runs on {self.device}: use augment.device=auto"
            )
        self.augmenter = (
            Augmenter(self.augment_cfg, data.spatial_dims) if self.augment_cfg else None
        )
        self.val_tile, self.val_batch = validation_tile(model, data, self.in_shape, cfg.batch_size)
        self.step = 0
        self.best = -math.inf
        # What validation scores and best.pt is chosen by; objects decoded with the defaults
        # until the search at the end of training tunes them.
        self.score_key = metric_key(data.metric)
        self.tune_cfg = tune if tune is not None else TuneConfig()
        self.postprocess = PostProcess()
        self.tuned: dict[str, Any] | None = None  # the search's result, for the checkpoint
        self.metrics: dict[str, float] = {}
        self.rank_rng: list[dict[str, Any]] | None = None  # every rank's RNG, for checkpoints
        self.resumes: list[dict[str, Any]] = []  # where the run was resumed, with what changes
        if self.world.rank > 0:
            # Same initial weights as rank 0 (drawn before), but dropout masks of its own.
            torch.manual_seed(step_seed(cfg.seed, 0, self.world.rank))
        main_logs = log.tensorboard and self.world.main
        self.tb = TensorBoardLogger(self.run_dir / "tensorboard" if main_logs else None)

    def _wrap_model(self) -> None:
        """``model`` trains (DDP around the net, compiled around that); ``eval_model`` validates
        on rank 0 alone, so never through DDP; ``eager_model`` is the fallback if compiling
        fails. All share the parameters of ``net``."""
        self.eager_model: nn.Module = self.net
        if self.world.size > 1:
            self.eager_model = DistributedDataParallel(
                self.net, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                gradient_as_bucket_view=True,
            )
        self.compiling = resolve_compile(self.cfg.compile, self.device)
        # Compiling is lazy: errors surface at the first call (see _first_compiled_step).
        self.model = torch.compile(self.eager_model) if self.compiling else self.eager_model
        self.eval_model = self.net
        if self.compiling:
            self.eval_model = self.model if self.world.size == 1 else torch.compile(self.net)
        self._compile_unproven = self.compiling

    # ----------------------------------------------------------------------------- the loop
    def autocast(self):
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def to_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
        out["image"] = out["image"].contiguous(memory_format=self.memory_format)
        return out

    def augment_on_device(self) -> bool:
        return self.augmenter is not None and self.augment_cfg.device != "cpu"

    def prepare(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Device transfer, augmentation of the whole batch there (one random field per
        sample), and the crop of the targets to the output tile."""
        batch = self.to_device(batch)
        if self.augment_on_device():
            # One generator per step: the draw depends on (seed, step, rank) only, so a resumed
            # run augments exactly as the uninterrupted one did, and ranks differ.
            generator = torch.Generator(self.device).manual_seed(
                step_seed(self.cfg.seed, self.step, self.world.rank)
            )
            batch = self.augmenter(batch, generator)
            batch["image"] = batch["image"].contiguous(memory_format=self.memory_format)
        return crop_to_output(batch, self.out_shape)

    def train_step(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimiser step (``self.step`` counts it); returns the (detached) loss and
        logits without a host sync."""
        if self._compile_unproven:
            return self._first_compiled_step(batch)
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        with self.autocast():
            outputs = self.model(batch["image"])
            # A deep-supervised model gives a list, main prediction first: the criterion
            # (DeepSupervisionLoss) weighs them all, the metrics see the main one.
            loss = self.criterion(outputs, batch["label"], batch["weight"], batch["ignore"])
            logits = outputs[0] if isinstance(outputs, (list, tuple)) else outputs
        self.scaler.scale(loss).backward()
        if self.cfg.grad_clip:
            self.scaler.unscale_(self.optimizer)
            norm = nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        else:
            norm = grad_norm(list(self.net.parameters()))
        self.divergence.update(torch.isfinite(loss.detach()) & torch.isfinite(norm),
                               self.step + 1)
        with interrupts.deferred():  # weights, schedule and step count move together
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
            self.step += 1
        return loss.detach(), logits.detach()

    def _first_compiled_step(
        self, batch: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The first compiled step, where torch.compile really compiles (forward and backward):
        if that fails, warn once and redo the step eagerly, from the same RNG state, so the
        run goes on as an eager one would have. Later steps run unguarded."""
        self._compile_unproven = False
        rng = self._rng_snapshot()
        error, out = None, None
        try:
            out = self.train_step(batch)
        except Exception as e:  # any compiler error: inductor, triton, a missing C compiler, ...
            error = first_line(e)  # not the exception: its traceback holds the failed graph
        # Every rank takes the same path, so DDP's collectives stay matched.
        if distributed.any_true(error is not None, self.device):
            self._fall_back_to_eager("the first training step", error)
            if out is None:  # this rank's step did not happen: do it eagerly, same dropout
                self._rng_restore(rng)
                out = self.train_step(batch)
        return out

    def _rng_snapshot(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The global RNG state of the CPU and of this device (no host sync)."""
        cuda = torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None
        return torch.get_rng_state(), cuda

    def _rng_restore(self, snapshot: tuple[torch.Tensor, torch.Tensor | None]) -> None:
        torch.set_rng_state(snapshot[0])
        if snapshot[1] is not None:
            torch.cuda.set_rng_state(snapshot[1], self.device)

    def _fall_back_to_eager(self, where: str, error: str | None) -> None:
        """Eager from now on: for validation only if it failed there (the training graph
        works, and under DDP the other ranks keep theirs), else for everything."""
        if error is not None:
            warnings.warn(
                f"torch.compile failed in {where} ({error}); it runs without "
                "compiling from now on (trainer.compile=false skips the attempt)",
                RuntimeWarning, stacklevel=3,
            )
        self.eval_model = self.net
        if where != "validation":
            self.model = self.eager_model
            self.compiling = self._compile_unproven = False

    def loader(self) -> DataLoader:
        in_workers = self.augmenter is not None and not self.augment_on_device()
        dataset = PatchDataset(
            self.data.train, self.in_shape, self.out_shape, self.cfg.seed,
            foreground_oversample=self.data.foreground_oversample,
            augment=self.augmenter if in_workers else None,
        )
        # trainer.batch_size is per process: rank r draws the r-th share of each global batch.
        sampler = StepSampler(
            self.step, self.cfg.max_steps, self.cfg.batch_size, self.world.rank, self.world.size
        )
        return DataLoader(
            dataset,
            batch_size=self.cfg.batch_size,
            sampler=sampler,
            num_workers=self.cfg.num_workers,
            pin_memory=self.device.type == "cuda",
            persistent_workers=False,
            # Its own generator, so creating the loader never advances the global torch RNG:
            # a resumed run then continues with the very RNG state the checkpoint holds.
            generator=torch.Generator(),
        )

    def fit(self) -> dict[str, float]:
        """Train to ``max_steps`` (from the resumed step), validating and checkpointing."""
        if self.step >= self.cfg.max_steps:
            raise SegunetError(
                f"the run is already at step {self.step} >= trainer.max_steps="
                f"{self.cfg.max_steps}: raise trainer.max_steps to train further"
            )
        self.start_step = self.step
        bar = tqdm(
            total=self.cfg.max_steps, initial=self.step,
            disable=not (self.log_cfg.progress and self.world.main),
            desc="train", unit="step", dynamic_ncols=True, file=sys.stderr,
        )
        try:
            with interrupts.sigterm_interrupts():
                self._loop(bar)
        except KeyboardInterrupt as e:
            bar.close()
            self._save_on_interrupt(e)
        bar.close()
        if self.world.main and self.tune_cfg.enabled and tunable(self.data):
            try:
                self._tune_checkpoints()
            except KeyboardInterrupt as e:
                raise self._search_interrupted(e) from None
        final = {f"val/{k}": v for k, v in self.metrics.items()}
        final[f"val/best_{self.score_key}"] = self.best
        self.tb.hparams(self._hparams(), {f"hparam/{k}": v for k, v in final.items()})
        self.tb.close()
        return final

    def _loop(self, bar: tqdm) -> None:
        """Steps to ``max_steps``: logging every ``log_every``, validation and checkpoints
        every ``val_every``."""
        loss_sum = torch.zeros((), device=self.device)
        window_steps, timed_steps, window_start = 0, 0, time.perf_counter()
        warmup = True
        for batch in self.loader():
            batch = self.prepare(batch)
            loss, logits = self.train_step(batch)
            loss_sum += loss
            window_steps += 1
            if warmup:
                # The first step compiles and autotunes: images/s starts after it (one
                # host sync per fit, off the hot path).
                warmup = False
                if self.device.type == "cuda":
                    torch.cuda.synchronize(self.device)
                window_start = time.perf_counter()
            else:
                timed_steps += 1
            bar.update(1)
            if self.step % self.log_cfg.log_every == 0 or self.step == self.cfg.max_steps:
                self.check_finite()  # before a non-finite loss is logged
                if self.world.main:
                    # The only host sync of the loop: once per logging window.
                    values = self._train_scalars(batch, logits, loss_sum / window_steps)
                    if timed_steps:
                        images = timed_steps * self.cfg.batch_size * self.world.size
                        elapsed = time.perf_counter() - window_start
                        values["train/images_per_s"] = images / elapsed
                    self.tb.scalars(values, self.step)
                    bar.set_postfix(loss=f"{values['train/loss']:.4f}", **self._postfix())
                loss_sum.zero_()
                window_steps, timed_steps, window_start = 0, 0, time.perf_counter()
            if self.step % self.log_cfg.image_every == 0:
                self.check_finite()
                self._log_picture("train/sample", batch)
            if self.step % self.cfg.val_every == 0 or self.step == self.cfg.max_steps:
                self._validate_and_save()
                bar.set_postfix(**self._postfix())
                window_start = time.perf_counter()  # validation is not training time

    def _tune_checkpoints(self) -> None:
        """Search the decoding on the validation images for the final weights (last.pt)
        and, where they differ, the best ones (best.pt); each checkpoint keeps its result."""
        self.tuned = self._tune(self.net, "last.pt")
        self.save_checkpoint("last.pt")
        best = self.run_dir / "checkpoints" / "best.pt"
        if not best.is_file():
            return
        ckpt = load_checkpoint(best)
        if int(ckpt["step"]) == self.step:
            ckpt["postprocess"] = self.tuned
        else:
            model = copy.deepcopy(self.net)
            model.load_state_dict(clean_state_dict(ckpt["model"]))
            ckpt["postprocess"] = self._tune(model, "best.pt")
        save_atomic(ckpt, best)

    def _search_interrupted(self, e: KeyboardInterrupt) -> SegunetError:
        """Ctrl-C or SIGTERM in the search after training: the trained checkpoints stay (each
        written whole), the search can run again on its own."""
        what = "terminated (SIGTERM)" if isinstance(e, interrupts.Terminated) else "interrupted"
        return SegunetError(
            f"{what} during the post-processing search after training; the checkpoints of "
            f"step {self.step} are saved in {self.run_dir / 'checkpoints'}; run the search "
            f"again with segunet tune checkpoint={self.run_dir}"
        )

    def _tune(self, model: nn.Module, name: str) -> dict[str, Any]:
        def predict(image: np.ndarray, tta: bool) -> np.ndarray:
            return predict_tiled(model, image, tile_shape=self.val_tile,
                                 batch_size=self.val_batch, device=self.device, tta=tta)

        result = tune_on(self.data.val, predict, self.data.target, self.data.metric,
                         self.tune_cfg, progress=self.log_cfg.progress and self.world.main)
        table = report(result)
        print(f"segunet: {name}: {describe_tuned(result)}\n{table}", file=sys.stderr)
        self.tb.text(f"postprocess/{name}", f"{describe_tuned(result)}\n\n{table}", self.step)
        return result

    def _save_on_interrupt(self, e: KeyboardInterrupt) -> None:
        """Ctrl-C or SIGTERM: save ``last.pt`` (ignoring further signals: torchrun passes
        the terminal's Ctrl-C on to the ranks a second time, and an impatient user presses it
        again), then stop with one line saying how to continue."""
        self.rank_rng = None  # the other ranks' RNG states are from an earlier step
        if self.world.size > 1:  # to the end: torchrun's own SIGINT follows the terminal's
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        with interrupts.ignored():
            self.check_finite()  # weights past a divergence are not saved
            self.save_checkpoint("last.pt")
        if not self.world.main:
            # Rank 0 saved and says so. Exiting 0 leaves torchrun waiting for it, where a
            # failed rank would make torchrun stop it mid-save.
            raise SystemExit(0) from None
        what = "terminated (SIGTERM)" if isinstance(e, interrupts.Terminated) else "interrupted"
        raise SegunetError(
            f"{what} at step {self.step}; saved {self.run_dir / 'checkpoints/last.pt'}; "
            f"continue with trainer.resume={self.run_dir}"
        ) from None

    def _validate_and_save(self) -> None:
        """Rank 0 validates and writes the checkpoints while the other ranks wait for its
        metrics; every rank's RNG state goes into the checkpoint for an exact resume."""
        self.check_finite()
        if self.world.size > 1:
            self.rank_rng = distributed.all_gather(rng_state())
        if self.world.main:
            self.metrics = self.validate()
            bad = [f"{k}={v}" for k, v in self.metrics.items() if not math.isfinite(v)]
            if bad:
                raise self.diverged(self.step, f"validation gave {', '.join(bad)}")
            self.tb.scalars({f"val/{k}": v for k, v in self.metrics.items()}, self.step)
            improved = self.metrics[self.score_key] > self.best
            if improved:
                self.best = self.metrics[self.score_key]
            with interrupts.deferred():  # a Ctrl-C now comes after both files are whole
                self.save_checkpoint("last.pt")
                if improved:
                    self.save_checkpoint("best.pt")
        self.metrics, self.best = distributed.broadcast((self.metrics, self.best))

    def _train_scalars(self, batch, logits, loss) -> dict[str, float]:
        counter = OverlapCounter(self.data.num_classes)
        counter.update(logits.argmax(1), batch["label"], ~batch["ignore"])
        m = counter.compute()
        values = {
            "train/loss": loss.item(),
            "train/dice": m["dice"],
            "train/iou": m["iou"],
            "train/lr": self.optimizer.param_groups[0]["lr"],
        }
        if self.device.type == "cuda":
            values["train/gpu_memory_gb"] = torch.cuda.max_memory_allocated(self.device) / 2**30
        return values

    def _postfix(self) -> dict[str, str]:
        return {"val_dice": f"{self.metrics['dice']:.3f}"} if self.metrics else {}

    # ------------------------------------------------------------------------- validation
    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Whole validation images through the tiled predictor that ``segunet predict`` uses
        (overlap-tile with mirrored context); loss, Dice and IoU of the classes over all of
        them, and the task's metric (``data.metric``) of the objects decoded from them."""
        counter = OverlapCounter(self.data.num_classes)
        scorer = TaskScorer(self.data.metric) if tunable(self.data) else None
        loss_sum = 0.0
        shown = None
        for volume in self.data.val:
            probs = self._predict(volume.image)
            target = {
                key: torch.from_numpy(getattr(volume, key))[None]
                for key in ("label", "weight", "ignore")
            }
            # log p as logits: softmax(log p) = p, so every loss sees the stitched prediction.
            logits = torch.from_numpy(probs)[None].clamp_min(1e-12).log()
            loss_sum += self.criterion(
                logits, target["label"], target["weight"], target["ignore"]
            ).item()
            counter.update(logits.argmax(1), target["label"], ~target["ignore"])
            objects = None
            if scorer is not None:
                objects = decode(probs, self.data.target, self.postprocess)
                scorer.update(objects, volume.instances, ~volume.ignore)
            shown = shown or (volume, probs, objects)
        first = self.data.val[0]
        start = (0,) * len(first.spatial_shape)
        sample = cut_sample(first, start, self.in_shape, self.out_shape)
        self._log_picture("val/sample", self.to_device(
            {k: v[None] for k, v in to_tensors(sample).items()}
        ))
        if self.tb.writer is not None:
            self.tb.image("val/classes_and_objects", classes_picture(*shown, self.data),
                          self.step)
        metrics = {"loss": loss_sum / len(self.data.val), **counter.compute()}
        if scorer is not None:
            metrics[self.score_key] = scorer.compute()
        return metrics

    def _predict(self, image: np.ndarray) -> np.ndarray:
        """Class probabilities of a whole image; through the compiled net while compiling
        works (eval mode and new tile counts compile anew), else eagerly."""
        def predict(model: nn.Module) -> np.ndarray:
            return predict_tiled(
                model, image, tile_shape=self.val_tile, batch_size=self.val_batch,
                device=self.device,
            )

        if self.eval_model is self.net:
            return predict(self.net)
        rng = self._rng_snapshot()
        try:
            return predict(self.eval_model)
        except Exception as e:  # a compiler error; an eager error repeats below
            error = first_line(e)
        self._fall_back_to_eager("validation", error)
        self._rng_restore(rng)
        return predict(self.net)

    def _log_picture(self, tag: str, batch: dict[str, torch.Tensor]) -> None:
        """Input, label, prediction, weight map (and attention maps) of the batch's first item."""
        if self.tb.writer is None:
            return
        model = self.net
        was_training = model.training
        model.eval()
        with torch.no_grad(), self.autocast():
            x = batch["image"][:1]
            if hasattr(model, "forward_with_attention"):
                logits, attention = model.forward_with_attention(x)
            else:
                logits, attention = model(x), []
        model.train(was_training)
        picture = panel(
            batch["image"][0], batch["label"][0], logits.argmax(1)[0], batch["weight"][0],
            [a[0] for a in attention], self.data.num_classes, self.data.spatial_dims,
        )
        self.tb.image(tag, picture, self.step)

    # ------------------------------------------------------------------------ checkpoints
    def state(self) -> dict[str, Any]:
        return {
            "model": clean_state_dict(self.net.state_dict()),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "step": self.step,
            "best_metric": self.best,
            "metrics": dict(self.metrics),
            "rng": rng_state(),
            "config": self.config,
            "resumes": self.resumes,
            "postprocess": self.tuned,
            "pixel_size": pixel_size_record(self.data.pixel_size),
        } | ({"rng_ranks": self.rank_rng} if self.rank_rng else {})

    def save_checkpoint(self, name: str) -> Path:
        """Write ``checkpoints/<name>`` atomically; rank 0 alone writes, the others skip."""
        path = self.run_dir / "checkpoints" / name
        if self.world.main:
            if self.before_first_save is not None:
                hook, self.before_first_save = self.before_first_save, None
                hook()
            save_atomic(self.state(), path)
        if name == "last.pt":
            self.last_good = (path, self.step)
        return path

    def check_finite(self) -> None:
        """Stop at a divergence (:class:`Divergence`), before anything of it is saved or
        logged."""
        step = self.divergence.step()
        if step:
            what = "the loss or a gradient was not finite (nan or inf)"
            if self.divergence.limit > 1:
                what += (f" for {self.divergence.limit} steps in a row, which fp16's gradient "
                         "scaler skipped")
            raise self.diverged(step, what)

    def diverged(self, step: int, what: str) -> SegunetError:
        """The one line of a run that went bad at ``step``: what was kept, the likely causes
        and how to go on. Bad from this process's first step on, the learning rate had not
        acted yet: the data is to blame."""
        from_the_start = step <= self.start_step + self.divergence.limit
        if from_the_start:
            causes = ("training data that is not finite or too large, as the learning rate "
                      "had not acted yet: the images, the weight maps (data.targets.w0) or a "
                      "corrupt weight-map cache (data.targets.cache_dir=null computes them "
                      "anew)")
            change = "the data fixed"
        else:
            lr = self.optimizer.defaults.get("lr")
            causes = (f"too high a learning rate (optim.lr={lr:g}; lower it or set "
                      "trainer.grad_clip), bad values in the training data, or a corrupt "
                      "weight-map cache (data.targets.cache_dir)")
            change = "a lower optim.lr"
        if self.last_good is None:
            kept, fix = "nothing was saved", f"rerun with {change}"
        else:
            path, good = self.last_good
            kept = f"{path} of step {good} is the last good checkpoint"
            fix = f"continue from it with trainer.resume={path} and {change}"
        return SegunetError(
            f"training diverged at step {step}: {what}; stopped, {kept}. Likely cause: "
            f"{causes}; {fix}"
        )

    def restore(self, path: str | Path, ckpt: dict[str, Any] | None = None) -> None:
        """Continue a run where its checkpoint (``ckpt``, read from ``path`` if not given)
        left it: exactly, or with changed optimiser and schedule settings applied from here
        on (:mod:`segunet.train.resume`)."""
        ckpt = ckpt if ckpt is not None else load_checkpoint(path)
        stored = upgrade(ckpt.get("config") or {})
        changes = resume.config_changes(stored, self.config) if stored else {}
        resume.check_optimizer(changes, str(path))
        try:
            self.net.load_state_dict(clean_state_dict(ckpt["model"]))
        except RuntimeError as e:
            raise SegunetError(
                f"checkpoint {path} holds a different model ({mismatch_detail(e)}); resume "
                "with the model overrides of that run (see its .hydra/overrides.yaml)"
            ) from e
        self.step = int(ckpt["step"])
        self.last_good = (Path(path), self.step)
        if resume.schedule_changed(changes):
            resume.apply_new_schedule(self.optimizer, self.scheduler, ckpt["optimizer"], self.step)
        else:
            self.optimizer.load_state_dict(ckpt["optimizer"])
            self.scheduler.load_state_dict(ckpt["scheduler"])
        self.scaler.load_state_dict(ckpt["scaler"])
        self.best = float(ckpt["best_metric"])
        self.metrics = dict(ckpt.get("metrics", {}))
        changed = {k: [resume.show(old), resume.show(new)] for k, (old, new) in changes.items()}
        self.resumes = [
            *ckpt.get("resumes", []),
            {"step": self.step, "checkpoint": str(path), "changed": changed},
        ]
        if changes and self.world.main:
            lr = self.optimizer.param_groups[0]["lr"]
            print(
                f"segunet: resuming at step {self.step} with changed settings: "
                f"{resume.describe(changes)}; they apply from here on (lr now {lr:.3g})",
                file=sys.stderr,
            )
        ranks = ckpt.get("rng_ranks") or []
        if self.world.rank == 0 or len(ranks) == self.world.size:
            set_rng_state(ranks[self.world.rank] if self.world.rank else ckpt["rng"])
        else:  # saved by another world size (or on Ctrl-C): dropout masks of this rank's own
            torch.manual_seed(step_seed(self.cfg.seed, self.step, self.world.rank))

    def _hparams(self) -> dict[str, object]:
        cfg = self.config
        model = cfg.get("model", {})
        return {
            "model": str(model.get("_target_", type(self.net).__name__)).split(".")[-1],
            "channels": str(model.get("channels")),
            "padding": str(model.get("padding")),
            "loss": str(cfg.get("loss", {}).get("_target_", "")).split(".")[-1],
            "optimizer": type(self.optimizer).__name__,
            "lr": float(self.optimizer.defaults.get("lr", 0.0)),
            "batch_size": self.cfg.batch_size,
            "devices": self.world.size,
            "max_steps": self.cfg.max_steps,
            "patch_size": str(list(self.in_shape)),
        }


def step_seed(seed: int, step: int, rank: int = 0) -> int:
    """A well-mixed 63-bit seed that depends on (seed, step, rank) only."""
    state = np.random.SeedSequence([seed % 2**64, step, rank]).generate_state(1, np.uint64)
    return int(state[0] >> np.uint64(1))


def seed_everything(seed: int) -> None:
    # numpy's global RNG is deliberately not seeded: data code uses explicit Generators only.
    random.seed(seed)
    torch.manual_seed(seed)


def build_trainer(cfg: DictConfig, run_dir: Path) -> Trainer:
    """Instantiate every config group and wire them into a :class:`Trainer`."""
    check_config(cfg)  # every group allowed and typed, before anything is built
    trainer_cfg: TrainerConfig = instantiate_group(cfg, "trainer")
    checkpoint = None
    if trainer_cfg.resume:  # read, and its stored config checked, before building too
        file = resolve_checkpoint(trainer_cfg.resume)
        checkpoint = load_checkpoint(file)
        check_all_targets(upgrade(checkpoint.get("config") or {}), str(file))
    log_cfg: LoggingConfig = instantiate_group(cfg, "logging")
    augment_cfg: AugmentConfig = instantiate_group(cfg, "augment")
    seed_everything(trainer_cfg.seed)  # before the model draws its initial weights
    model = instantiate_group(cfg, "model")
    if trainer_cfg.init_from:
        start_from(model, trainer_cfg.init_from)
    data: SegmentationData = instantiate_group(cfg, "data")
    criterion = instantiate_group(cfg, "loss")
    if getattr(model, "deep_supervision", False):
        from segunet.train.losses import DeepSupervisionLoss

        criterion = DeepSupervisionLoss(criterion, getattr(model, "ds_weights", None))
    optimizer = instantiate_group(cfg, "optim")(model.parameters())
    scheduler = instantiate_group(cfg, "scheduler")(optimizer)
    trainer = Trainer(
        model, data, criterion, optimizer, scheduler, trainer_cfg, log_cfg, run_dir,
        config=OmegaConf.to_container(cfg, resolve=True),
        augment=augment_cfg,
        tune=instantiate_group(cfg, "postprocess") if "postprocess" in cfg else None,
    )
    if checkpoint is not None:
        trainer.restore(file, checkpoint)
    return trainer


def start_from(model: nn.Module, init_from: str) -> None:
    """``trainer.init_from``: the weights to fine-tune, an output layer of other classes
    re-initialised with one warning."""
    from segunet import pretrained

    fresh = init_weights(model, pretrained.resolve(init_from, "trainer.init_from"),
                         "trainer.init_from")
    if fresh:
        warnings.warn(
            f"trainer.init_from={init_from}: its output layer predicts other classes "
            f"({', '.join(fresh)} differ in shape): re-initialised, the rest loaded",
            RuntimeWarning, stacklevel=2,
        )


def run(cfg: DictConfig, run_dir: Path) -> dict[str, float]:
    """Train one configuration into ``run_dir``; return the final validation metrics.

    Under torchrun this is one rank of a data-parallel run: it joins the process group here
    and leaves it at the end, also on errors.
    """
    trainer_cfg: TrainerConfig = instantiate_group(cfg, "trainer")
    if trainer_cfg.devices > 1 and distributed.env_world().size == 1:
        n = trainer_cfg.devices
        raise SegunetError(
            f"trainer.devices={n} needs one process per device: run `segunet train "
            f"trainer.devices={n} ...` or `torchrun --nproc_per_node={n} -m segunet.train ...`"
        )
    world = distributed.init(trainer_cfg.device)
    lock = None
    try:
        run_dir = _shared_run_dir(Path(run_dir), world)
        if world.main:  # held to the end of the run; the ranks share rank 0's folder
            lock = run_folder.claim(run_dir, trainer_cfg.resume)
        trainer = build_trainer(cfg, run_dir)
        if world.main and trainer.step < trainer.cfg.max_steps:  # else fit() refuses it
            # With its first checkpoint: a resume that diverges or fails before it saves
            # leaves the record of the run that wrote the checkpoints.
            trainer.before_first_save = functools.partial(_write_deferred_record, cfg, run_dir)
        if world.main:
            ranks = f" x {world.size} processes" if world.size > 1 else ""
            print(
                f"segunet: training {type(trainer.net).__name__} on '{trainer.data.name}' "
                f"({len(trainer.data.train)} train / {len(trainer.data.val)} val images), "
                f"patch {list(trainer.in_shape)} -> {list(trainer.out_shape)}, "
                f"device {trainer.device}{ranks}, precision {trainer.amp_dtype or torch.float32}"
                f", compile {'on' if trainer.compiling else 'off'}",
                file=sys.stderr,
            )
        final = trainer.fit()
        if world.main:
            print(summary(trainer, final), file=sys.stderr)
        return final
    finally:
        if lock is not None:
            lock.close()
        distributed.shutdown()


def _write_deferred_record(cfg: DictConfig, run_dir: Path) -> None:
    """The run's ``.hydra`` record, which ``segunet train`` had Hydra hold back in a folder
    that already held one (:data:`run_folder.DEFER_RECORD`) until the run was accepted."""
    if HydraConfig.initialized() and run_folder.DEFER_RECORD in HydraConfig.get().overrides.hydra:
        run_folder.write_record(run_dir, cfg, HydraConfig.instance().cfg)


def summary(trainer: Trainer, final: dict[str, float]) -> str:
    """The lines that end a run: its scores and where its files are."""
    run_dir, key = trainer.run_dir, trainer.score_key
    written = [n for n in ("best.pt", "last.pt") if (run_dir / "checkpoints" / n).is_file()]
    scores = ", ".join(
        f"val {k} {final.get(f'val/{k}', float('nan')):.4f}"
        for k in dict.fromkeys([key, "dice", "iou"])
    )
    tuned = f"\n  {describe_tuned(trainer.tuned)}" if trainer.tuned else ""
    return (
        f"segunet: done at step {trainer.step}: {scores} (best {key} {trainer.best:.4f})"
        f"{tuned}\n"
        f"  run folder:  {run_dir}\n"
        f"  checkpoints: {run_dir / 'checkpoints'} ({', '.join(written) or 'none written'})\n"
        f"  TensorBoard: tensorboard --logdir {run_dir / 'tensorboard'}"
    )


def _shared_run_dir(run_dir: Path, world: distributed.World) -> Path:
    """Rank 0's run folder on every rank. Started by bare torchrun without hydra.run.dir, a
    rank's Hydra may have stamped a later second into its own, empty folder: remove that."""
    if world.size == 1:
        return run_dir
    shared = Path(distributed.broadcast(str(run_dir.resolve())))
    if shared != run_dir.resolve() and run_dir.is_dir() and not any(run_dir.iterdir()):
        run_dir.rmdir()
    return shared
