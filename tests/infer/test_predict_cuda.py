"""The CUDA paths of tiled prediction (image resident on the GPU, blending there, bands copied
to the host in the writer thread) against the host paths; skipped without CUDA."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import zarr
from helpers import random_image, unet, whole_image_reference

from segunet.infer.predict import predict_tiled

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.parametrize("padding, dims", [("same", 2), ("valid", 2), ("same", 3)])
def test_resident_and_host_paths_agree_on_cuda(padding, dims):
    model = unet(padding, dims)
    shape = (1, 150, 131) if dims == 2 else (1, 36, 40, 33)
    image = random_image(shape)
    tile = 64 if dims == 2 else 32
    resident = predict_tiled(model, image, tile, device="cuda", resident=True)
    host = predict_tiled(model, image, tile, device="cuda", resident=False)
    np.testing.assert_allclose(resident, host, atol=1e-5)
    cpu = predict_tiled(model, image, tile, device="cpu")
    # bf16 autocast on CUDA against fp32 on the CPU.
    np.testing.assert_allclose(resident, cpu, atol=5e-2)
    assert np.allclose(resident.sum(0), 1, atol=1e-3)


def test_valid_net_on_cuda_is_seam_free():
    model = unet("valid", 2)
    image = random_image((1, 203, 177))
    probs = predict_tiled(model, image, 92, device="cuda")
    reference = whole_image_reference(model.cpu(), image)
    np.testing.assert_allclose(probs, reference, atol=5e-2)  # bf16 on the GPU


def test_stream_from_zarr_to_zarr_on_cuda_equals_in_memory(tmp_path):
    model = unet("same", 2)
    image = random_image((1, 300, 260))
    memory = predict_tiled(model, image, 64, device="cuda")
    lazy = zarr.open(str(tmp_path / "in.zarr"), mode="w", shape=image.shape, chunks=(1, 50, 260),
                     dtype="float32")
    lazy[:] = image
    out = zarr.open(str(tmp_path / "p.zarr"), mode="w", shape=(2, 300, 260), chunks=(2, 64, 64),
                    dtype="float16")
    predict_tiled(model, lazy, 64, device="cuda", out=out)
    np.testing.assert_allclose(out[:].astype(np.float32), memory, atol=2e-3)


def test_result_in_host_memory_comes_band_by_band_through_pinned_copies():
    """On CUDA the in-memory result is filled by a BandMerger whose bands cross to the host
    on a side stream: the same numbers as blending everything on the host."""
    from segunet.infer.merger import InMemoryMerger

    model = unet("same", 2)
    image = random_image((1, 700, 300))  # several 256-row blocks
    banded = predict_tiled(model, image, 64, device="cuda")
    host = predict_tiled(model, image, 64, device="cuda",
                         out=InMemoryMerger((2, 700, 300), weighted=True))
    assert banded.dtype == np.float32 and banded.flags.c_contiguous
    np.testing.assert_allclose(banded, host, atol=1e-6)


def test_a_compiled_model_keeps_its_memory_layout():
    """The trainer validates through its compiled training model: predicting must not turn
    those weights channels-last behind the trainer's back (its layout is its own choice)."""
    model = unet("same", 2).cuda()
    compiled = torch.compile(model, backend="eager")
    predict_tiled(compiled, random_image((1, 64, 64)), 32, device="cuda")
    assert all(p.is_contiguous() for p in model.parameters())
