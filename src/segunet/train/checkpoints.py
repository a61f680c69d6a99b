"""Checkpoints, a part of :class:`~segunet.train.trainer.Trainer`: the state a run saves
(atomically, rank 0 alone), restores on resume and saves on Ctrl-C or SIGTERM, and the
divergence check that stops a run before anything of it is saved."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import torch

from segunet import interrupts
from segunet.checkpoint import (
    clean_state_dict,
    load_checkpoint,
    mismatch_detail,
    pixel_size_record,
    rng_state,
    save_atomic,
    set_rng_state,
)
from segunet.config.compose import upgrade
from segunet.config.quoting import typed
from segunet.data.objectsize import object_size_record
from segunet.errors import SegunetError, say
from segunet.train import resume
from segunet.train.settings import step_seed

#: fp16's GradScaler skips a step whose gradients overflowed and lowers its scale: a skipped
#: step now and then is how it finds the scale; this many in a row, the run has diverged.
MAX_SKIPPED_STEPS = 10


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


class Checkpoints:
    """The checkpoint part of :class:`~segunet.train.trainer.Trainer`, which mixes it in: it
    uses the trainer's net, optimiser, schedule, scaler and step."""

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
            "object_size": object_size_record(self.object_diameters),
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
            say(
                f"segunet: resuming at step {self.step} with changed settings: "
                f"{resume.describe_changes(changes)}; they apply from here on (lr now {lr:.3g})"
            )
        ranks = ckpt.get("rng_ranks") or []
        if self.world.rank == 0 or len(ranks) == self.world.size:
            set_rng_state(ranks[self.world.rank] if self.world.rank else ckpt["rng"])
        else:  # saved by another world size (or on Ctrl-C): dropout masks of this rank's own
            torch.manual_seed(step_seed(self.cfg.seed, self.step, self.world.rank))

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
        what = interrupts.describe(e)
        raise SegunetError(
            f"{what} at step {self.step}; saved {self.run_dir / 'checkpoints/last.pt'}; "
            f"continue with {typed('trainer.resume', str(self.run_dir))}"
        ) from None
