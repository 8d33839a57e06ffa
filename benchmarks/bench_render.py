"""Channel grids rendered to PNG three ways, in one run.

* featcheck: ``channel_grid`` (colormap, marks, labels, caption) and one PNG encode
  (``compress_level=1``; also reported at Pillow's default level 6);
* torchvision: ``make_grid`` (per-tile normalisation) + ``save_image``;
* tutorials: one matplotlib Axes per channel (``plt.subplots``) + ``savefig``.

Two layers: 512 channels of 28x28 and 64 channels of 112x112 (random data, one channel dead).
Prints the time of each, ratios against featcheck, and the PNG sizes.

    python benchmarks/bench_render.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import io
import math
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
import torchvision  # noqa: E402

import featcheck  # noqa: E402


def featcheck_png(x: torch.Tensor, level: int = 1) -> bytes:
    buf = io.BytesIO()
    featcheck.channel_grid(x, max_channels=None).save(buf, format="png", compress_level=level)
    return buf.getvalue()


def torchvision_png(x: torch.Tensor) -> bytes:
    buf = io.BytesIO()
    grid = torchvision.utils.make_grid(x.unsqueeze(1), nrow=math.ceil(math.sqrt(x.shape[0])), normalize=True, scale_each=True)
    torchvision.utils.save_image(grid, buf, format="png")
    return buf.getvalue()


def subplots_png(x: torch.Tensor) -> bytes:
    c = x.shape[0]
    n = math.ceil(math.sqrt(c))
    fig, axes = plt.subplots(n, n, figsize=(n, n))
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < c:
            ax.imshow(x[i].numpy(), cmap="viridis")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=50)
    plt.close(fig)
    return buf.getvalue()


def timed(fn, x: torch.Tensor, repeat: int) -> tuple[float, int]:
    best, size = float("inf"), 0
    for _ in range(repeat):
        t = time.perf_counter()
        size = len(fn(x))
        best = min(best, time.perf_counter() - t)
    return best, size


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'layer':<14} {'method':<22} {'ms':>9} {'x featcheck':>12} {'PNG KiB':>8}")
    for c, hw in ((512, 28), (64, 112)):
        x = torch.randn(c, hw, hw)
        x[3] = 0.0
        featcheck_png(x)  # warm caches (colormap, font)
        runs = {
            "featcheck": timed(featcheck_png, x, args.repeat),
            "featcheck (level 6)": timed(lambda t: featcheck_png(t, 6), x, args.repeat),
            "make_grid+save_image": timed(torchvision_png, x, args.repeat),
            "subplots per channel": timed(subplots_png, x, 1),
        }
        base = runs["featcheck"][0]
        for name, (t, size) in runs.items():
            print(f"{f'{c}x{hw}x{hw}':<14} {name:<22} {t * 1e3:9.1f} {t / base:12.1f} {size / 1024:8.0f}")


if __name__ == "__main__":
    main()
