"""A bioimage.io package written by ``segunet export`` as a segunet model again: what
``segunet.load("model.zip")`` reads, so that a package a user was sent segments in Python
(and in napari) as the checkpoint it came from did, with the decoding tuned for it.

The package holds the net's state dict (``weights.state_dict.pt``, loaded with
``weights_only``), the training config (YAML, read safely, taken literally and built only
into segunet's own model classes, as a checkpoint is) and :data:`RECORD`: what a checkpoint
holds besides them (the tuned decoding, the pixel and object sizes of the training data).
Nothing in it runs code.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path
from typing import Any

#: The package's member with the checkpoint's entries that predict reads.
RECORD = "segunet.json"
#: The entries copied into it.
ENTRIES = ("postprocess", "pixel_size", "object_size", "step")
#: The largest member read (bytes): a package is weights of megabytes, not a zip bomb.
MAX_MEMBER = 2**31


def record_of(ckpt: dict) -> dict[str, Any]:
    """What :data:`RECORD` holds of checkpoint ``ckpt``."""
    return {"format": "segunet", **{k: ckpt.get(k) for k in ENTRIES}}


def load_package(file: Path, device: str = "cpu") -> Any:
    """The :class:`~segunet.checkpoint.Trained` model of the segunet package ``file``; one
    line for a zip that is not one."""
    import torch
    import yaml

    from segunet.checkpoint import check_weights, trained_of
    from segunet.config.compose import check_literal
    from segunet.errors import SegunetError
    from segunet.export.bioimageio_description import STATE_DICT

    if not Path(file).is_file():
        raise SegunetError(f"{file} does not exist: give a .zip that segunet export wrote, a "
                           "checkpoint, a run folder or nuclei")
    try:
        with zipfile.ZipFile(file) as z:
            sizes = {i.filename: i.file_size for i in z.infolist()}
            needed = (RECORD, STATE_DICT, "training_config.yaml")
            if not all(n in sizes for n in needed):
                raise SegunetError(
                    f"{file} is no bioimage.io package written by segunet export (it has no "
                    f"{RECORD}): run it with bioimageio.core, or load a segunet checkpoint")
            if any(sizes[n] > MAX_MEMBER for n in needed):
                raise SegunetError(f"{file}: a member is larger than {MAX_MEMBER} bytes")
            record = json.loads(z.read(RECORD))
            config = yaml.safe_load(z.read("training_config.yaml"))
            state = torch.load(io.BytesIO(z.read(STATE_DICT)), map_location="cpu",
                               weights_only=True)
    except (zipfile.BadZipFile, json.JSONDecodeError, yaml.YAMLError, RuntimeError) as e:
        raise SegunetError(f"{file} is no readable bioimage.io package ({type(e).__name__})"
                           ) from None
    if not isinstance(record, dict) or record.get("format") != "segunet":
        raise SegunetError(f"{file}: its {RECORD} is not segunet's")
    check_literal(config, str(file))
    check_weights(state, file)
    # The weights of Probabilities(AnySize(net)): the net's own keys under model.model.
    state = {k.removeprefix("model.model."): v for k, v in state.items()}
    ckpt = {"model": state, "config": config, **{k: record.get(k) for k in ENTRIES}}
    return trained_of(ckpt, Path(file), device)
