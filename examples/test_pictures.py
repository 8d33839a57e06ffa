"""Pictures of trained and random-weight models, shown in the report.

Run with ``--featcheck --html=featcheck-report/report.html``: every ``featcheck.show`` and
``featcheck.show_kernels`` lands next to its test in the pytest-html report and in the gallery
(``featcheck-report/index.html``). Without ``--featcheck`` they cost nothing.
"""

from __future__ import annotations

import os

import matplotlib
import pytest
import torch
import torchvision

from fixtures import demo_cnn

PHOTO = os.path.join(os.path.dirname(matplotlib.__file__), "mpl-data", "sample_data", "grace_hopper.jpg")


@pytest.fixture(scope="module")
def trained():
    """The small CNN in fixtures/, trained on synthetic shapes (weights committed, 106 KB)."""
    return demo_cnn.load()


def test_a_trained_cnn_sees_edges_of_shapes(featcheck, trained):
    x, labels = demo_cnn.shapes(8, seed=5)
    cap = featcheck.capture(trained, x)
    assert (cap.output.argmax(1) == labels).float().mean() >= 0.75
    featcheck.show_kernels(trained, layers="features.0")
    featcheck.show(cap, layers=["features.2", "features.6", "features.10"], select="energy")
    featcheck.assert_finite(cap)


def test_pca_of_the_last_feature_map(featcheck, trained):
    x, _ = demo_cnn.shapes(2, seed=7)
    cap = featcheck.capture(trained, x, layers="features.10")
    pca = featcheck.pca_rgb(cap["features.10"])
    assert pca.size[0] >= 128
    featcheck.show(pca, title="PCA of features.10")


def test_resnet18_on_a_photograph(featcheck):
    model = torchvision.models.resnet18(weights=None)
    featcheck.calibrate_batchnorm(model, [torch.randn(8, 3, 224, 224) for _ in range(2)])
    image = featcheck.load_image(PHOTO)
    cap = featcheck.capture(model, image, layers=["relu", "layer1", "layer4"])
    featcheck.show(cap, select="energy")
    featcheck.show_kernels(model.conv1)
    heat = featcheck.heatmap(cap["layer1"], image=featcheck.to_image(image))
    assert heat.size[0] > 224
    featcheck.show(heat, title="layer1 over the photo")
