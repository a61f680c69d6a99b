"""Training: the loop behind ``segunet train`` (its Hydra app is :mod:`segunet.cli.train`).

The loop is deliberately plain: ``fit`` draws batches, ``train_step`` does one optimiser step
under whatever autocast context the precision asks for, ``validate`` runs the overlap-tile
prediction over whole validation images, and checkpoints are written atomically.

:class:`Trainer` owns the loop and mixes in the other parts: :mod:`.compiling`,
:mod:`.validation` (and scoring) and :mod:`.checkpoints`; :mod:`.settings` resolves the
``trainer`` group. :func:`build_trainer` wires it from a config, :func:`run` trains one.
"""

from __future__ import annotations

import functools
import math
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from segunet import interrupts
from segunet.checkpoint import init_weights, load_checkpoint, resolve_checkpoint
from segunet.config.compose import (
    check_all_targets,
    check_config,
    instantiate_group,
    upgrade,
)
from segunet.data.augment import AugmentConfig, Augmenter
from segunet.data.datasets import (
    PatchDataset,
    SegmentationData,
    StepSampler,
    crop_to_output,
    shares_line,
)
from segunet.errors import SegunetError, console, say
from segunet.eval.metrics import metric_key
from segunet.models.device import resolve_device
from segunet.postprocess.decoding import PostProcess
from segunet.postprocess.tune import TuneConfig, describe_tuned, tunable
from segunet.train import distributed, run_folder
from segunet.train.checkpoints import MAX_SKIPPED_STEPS, Checkpoints, Divergence
from segunet.train.compiling import Compiling
from segunet.train.logger import LoggingConfig, TensorBoardLogger, scalars_line
from segunet.train.settings import (  # TrainerConfig: also the trainer group's _target_
    TrainerConfig,
    check_compatible,
    resolve_patch_size,
    resolve_precision,
    seed_everything,
    step_seed,
    sync_batchnorm,
)
from segunet.train.validation import Validation, validation_tile


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


def grad_norm(parameters: Sequence[nn.Parameter]) -> torch.Tensor:
    """The total 2-norm of the gradients (finite unless one of them is not)."""
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return torch.zeros(())
    if hasattr(nn.utils, "get_total_norm"):  # torch >= 2.6: one fused pass
        return nn.utils.get_total_norm(grads)
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))


class Trainer(Compiling, Validation, Checkpoints):
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
        # What predict's scale=auto resamples an image's objects to.
        self.object_diameters = data.object_diameters()
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

    def loader(self) -> DataLoader:
        in_workers = self.augmenter is not None and not self.augment_on_device()
        dataset = PatchDataset(
            self.data.train, self.in_shape, self.out_shape, self.cfg.seed,
            foreground_oversample=self.data.foreground_oversample,
            augment=self.augmenter if in_workers else None, balance=self.data.balance,
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
        if self.data.balance and self.world.main:
            say(f"segunet: data.balance=appearance: patches drawn {shares_line(self.data.train)}")
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
                    console.info(scalars_line(values, self.step, self.cfg.max_steps))
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
    if trainer_cfg.init_from:  # before the schedule, which starts from the groups' rates
        finetune_lr(optimizer, trainer_cfg.finetune_lr_scale)
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
    """``trainer.init_from``: the weights to fine-tune, said in one line (the file and the
    tensors loaded); an output layer of other classes re-initialised with one warning."""
    from segunet import pretrained

    done = init_weights(model, pretrained.resolve(init_from, "trainer.init_from"),
                        "trainer.init_from")
    state = model.state_dict()
    values = sum(state[k].numel() for k in done.loaded)
    say(f"segunet: trainer.init_from={init_from}: loaded {len(done.loaded)} of {len(state)} "
        f"tensors ({values / 1e6:.2f}M values) from {done.file}"
        + (f"; re-initialised {', '.join(done.fresh)}" if done.fresh else ""))
    if done.fresh:
        warnings.warn(
            f"trainer.init_from={init_from}: its output layer predicts other classes "
            f"({', '.join(done.fresh)} differ in shape): re-initialised, the rest loaded",
            RuntimeWarning, stacklevel=2,
        )


def finetune_lr(optimizer: torch.optim.Optimizer, scale: float) -> None:
    """``trainer.finetune_lr_scale``: the learning rate of a fine-tune, said in one line.
    Neither rate wins everywhere (README, Fine-tuning): the recipe's adapts a model to a
    modality it never saw, a tenth keeps what it knew on images like its own."""
    for group in optimizer.param_groups:
        group["lr"] *= scale
    optimizer.defaults["lr"] *= scale
    lr = f"lr {optimizer.defaults['lr']:.3g}"
    say(f"segunet: fine-tuning at the recipe's {lr}, for images unlike the model's own; "
        "trainer.finetune_lr_scale=0.1 keeps more of what it knew, for images like them"
        if scale == 1 else
        f"segunet: fine-tuning at {lr} (optim.lr x trainer.finetune_lr_scale={scale:g})")


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
            f"trainer.devices={n} ...` or `torchrun --nproc_per_node={n} -m segunet.cli train ...`"
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
            say(
                f"segunet: training {type(trainer.net).__name__} on '{trainer.data.name}' "
                f"({len(trainer.data.train)} train / {len(trainer.data.val)} val images), "
                f"patch {list(trainer.in_shape)} -> {list(trainer.out_shape)}, "
                f"device {trainer.device}{ranks}, precision {trainer.amp_dtype or torch.float32}"
                f", compile {'on' if trainer.compiling else 'off'}"
            )
        final = trainer.fit()
        if world.main:
            say(summary(trainer, final))
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
