"""Models that ship with segunet: predict, export or fine-tune them without training first.

``nuclei``: a U-Net of the boundary target (background / nucleus interior / nucleus
boundary) trained with ``experiment=dsb2018_cpu`` (4000 steps on a 2-core CPU; its best
checkpoint is the last) on the DSB 2018 nuclei (fluorescence, grey), its post-processing tuned
on their validation images; the README gives its scores on held-out DSB images
(``scripts/make_pretrained.py`` says how it was made). Used by ``segunet predict
model=nuclei``, ``segunet export model=nuclei`` and ``segunet train trainer.init_from=nuclei``.
Imports only errors.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from segunet.errors import SegunetError

#: Name -> checkpoint file in this package.
MODELS = {"nuclei": "nuclei.pt"}
#: Who made them: the authors a bioimage.io package of one names unless told otherwise.
SHIPPED_AUTHORS = ("the segunet developers",)


def path_of(name: str, key: str = "model") -> Path:
    """The checkpoint file of the shipped model ``name``; one line naming ``key`` if none."""
    if name not in MODELS:
        raise SegunetError(
            f"{key}={name} is no model that ships with segunet: use one of "
            f"{', '.join(MODELS)}, or a checkpoint file or run folder"
        )
    file = Path(str(resources.files(__name__) / MODELS[name]))
    if not file.is_file():
        raise SegunetError(f"{key}={name}: {file} is missing from this installation of segunet")
    return file


def shipped(file: Path) -> bool:
    """Whether ``file`` is one of the models that ship with segunet."""
    here = Path(str(resources.files(__name__)))
    return Path(file).resolve().parent == here.resolve()


def checkpoint_or_model(checkpoint: str | None, model: str | None) -> str:
    """The checkpoint a command reads: ``checkpoint=`` or the shipped ``model=``, not both."""
    if (checkpoint is None) == (model is None):
        raise SegunetError(
            "give checkpoint=<file or run folder> or model=<"
            f"{'|'.join(MODELS)}> (a model that ships with segunet), not "
            f"{'both' if checkpoint else 'neither'}"
        )
    return checkpoint if checkpoint is not None else str(path_of(model))


def resolve(name_or_path: str, key: str) -> str:
    """A shipped model's name as its file; anything else (a checkpoint path) as given."""
    return str(path_of(name_or_path, key)) if name_or_path in MODELS else name_or_path
