"""Pictures of a real model: channel grids, kernels, a PCA composite and a heatmap.

The input is a photograph matplotlib ships (no download). The PNGs land in the featcheck
directory (``--featcheck-dir``, default ``featcheck-report/``) under ``examples/``.
"""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib
import pytest
import torch
import torchvision

PHOTO = os.path.join(os.path.dirname(matplotlib.__file__), "mpl-data", "sample_data", "grace_hopper.jpg")


@pytest.fixture(scope="module")
def resnet_capture():
    import featcheck

    model = torchvision.models.resnet18(weights=None)
    featcheck.calibrate_batchnorm(model, [torch.randn(8, 3, 224, 224) for _ in range(2)])
    image = featcheck.load_image(PHOTO)
    return model, image, featcheck.capture(model, image, layers=["relu", "layer1", "layer2", "layer4"])


def out_dir(featcheck) -> Path:
    path = Path(featcheck.report_dir) / "examples"
    path.mkdir(parents=True, exist_ok=True)
    return path


def test_channel_grids_of_resnet_stages(featcheck, resnet_capture):
    _, _, cap = resnet_capture
    for name in ("relu", "layer1", "layer4"):
        grid = featcheck.channel_grid(cap[name], select="energy")
        grid.save(out_dir(featcheck) / f"grid_{name}.png", compress_level=1)
        assert f"{name}  " in grid.info["caption"]


def test_first_layer_kernels_and_a_later_conv(featcheck, resnet_capture):
    model, _, _ = resnet_capture
    featcheck.kernel_grid(model.conv1, title="conv1").save(out_dir(featcheck) / "kernels_conv1.png", compress_level=1)
    featcheck.kernel_grid(model.layer1[0].conv1, title="layer1.0.conv1").save(out_dir(featcheck) / "kernels_layer1.png", compress_level=1)


def test_pca_composite_and_heatmap_over_the_photo(featcheck, resnet_capture):
    _, image, cap = resnet_capture
    featcheck.pca_rgb(cap["layer2"]).save(out_dir(featcheck) / "pca_layer2.png", compress_level=1)
    featcheck.heatmap(cap["layer2"], image=featcheck.to_image(image)).save(out_dir(featcheck) / "heatmap_layer2.png", compress_level=1)
