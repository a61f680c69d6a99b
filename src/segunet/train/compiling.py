"""Compiling, a part of :class:`~segunet.train.trainer.Trainer`: the net wrapped for training
(DDP, then ``torch.compile``) and for validation, and the fall-back to eager execution when
compiling fails, which the run survives with one warning."""

from __future__ import annotations

import warnings

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from segunet.errors import first_line
from segunet.train import distributed
from segunet.train.settings import resolve_compile


class Compiling:
    """The compiling part of :class:`~segunet.train.trainer.Trainer`, which mixes it in: it
    uses the trainer's net, device, world and training step."""

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
