"""Validation and scoring, a part of :class:`~segunet.train.trainer.Trainer`: whole validation
images through the tiled predictor that ``segunet predict`` uses, the metrics that choose
best.pt, the pictures for TensorBoard, and the post-processing search after training."""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from segunet import interrupts
from segunet.checkpoint import clean_state_dict, load_checkpoint, rng_state, save_atomic
from segunet.data.datasets import SegmentationData, cut_sample, to_tensors
from segunet.data.tiling import tile_within
from segunet.errors import SegunetError, console, first_line, say
from segunet.eval.metrics import OverlapCounter, TaskScorer
from segunet.infer.predict import predict_tiled
from segunet.postprocess.decoding import decode
from segunet.postprocess.tune import describe_tuned, report, tunable, tune_on
from segunet.train import distributed
from segunet.train.logger import classes_picture, panel, scalars_line


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


class Validation:
    """The validation part of :class:`~segunet.train.trainer.Trainer`, which mixes it in: it
    uses the trainer's net, data, device, checkpoints and TensorBoard logger."""

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
            scalars = {f"val/{k}": v for k, v in self.metrics.items()}
            self.tb.scalars(scalars, self.step)
            console.info(scalars_line(scalars, self.step, self.cfg.max_steps))
            improved = self.metrics[self.score_key] > self.best
            if improved:
                self.best = self.metrics[self.score_key]
            with interrupts.deferred():  # a Ctrl-C now comes after both files are whole
                self.save_checkpoint("last.pt")
                if improved:
                    self.save_checkpoint("best.pt")
        self.metrics, self.best = distributed.broadcast((self.metrics, self.best))

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
        what = interrupts.describe(e)
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
        say(f"segunet: {name}: {describe_tuned(result)}\n{table}")
        self.tb.text(f"postprocess/{name}", f"{describe_tuned(result)}\n\n{table}", self.step)
        return result

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
