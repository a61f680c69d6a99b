"""segunet: the U-Net of Ronneberger et al. (2015) and its descendants for biomedical images.

The Python API (:mod:`segunet.api`) is this package's top: ``segunet.load("nuclei")``
returns a :class:`~segunet.api.Model` whose ``segment`` and ``predict`` take arrays. It is
imported on first use, so ``import segunet`` stays light (no torch).
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["Model", "load"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from segunet import api

        return getattr(api, name)
    raise AttributeError(f"module 'segunet' has no attribute {name!r}")
