"""The demo's figure: loss curve, reconstructions of test digits, samples from the prior."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from .._checks import check_int
from .data import IMAGE_SIDE
from .training import TrainResult

__all__ = ["image_grid", "write_figure"]


def image_grid(images: Tensor, rows: int, side: int = IMAGE_SIDE, gap: int = 1) -> Tensor:
    """Tiles ``(n, side * side)`` images into one ``(H, W)`` image, ``rows`` rows, gaps of NaN.

    NaN gaps are drawn in the colormap's "bad" colour by matplotlib.
    """
    rows = check_int("rows", rows, minimum=1)
    side = check_int("side", side, minimum=1)
    gap = check_int("gap", gap, minimum=0)
    n = images.shape[0]
    cols = -(-n // rows)
    grid = torch.full((rows * (side + gap) - gap, cols * (side + gap) - gap), float("nan"))
    for i, image in enumerate(images.reshape(n, side, side)):
        r, c = divmod(i, cols)
        grid[r * (side + gap) : r * (side + gap) + side, c * (side + gap) : c * (side + gap) + side] = image
    return grid


def write_figure(
    result: TrainResult,
    test_x: Tensor,
    path: str | Path,
    num_images: int = 12,
    baseline: float | None = None,
) -> Path:
    """Draws the figure of a training run and writes it to ``path`` (PNG); returns the path.

    Panels: the training loss per step (nats per image) with the temperature, the
    held-out negative ELBO of the discrete model before and after training, and
    ``baseline`` (if given: the held-out negative log-likelihood of a model without
    latents, which a VAE that uses its latents must beat); ``num_images`` test digits above their
    reconstructions (each latent set to its most probable class); ``3 * num_images``
    digits decoded from samples of the uniform prior (pixel probabilities).
    """
    num_images = check_int("num_images", num_images, minimum=1)
    import matplotlib
    from matplotlib.figure import Figure  # no pyplot: no display needed, no global state

    vae, config = result.vae, result.config
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    originals = test_x[:num_images]
    reconstructions = vae.reconstruct(originals)
    with torch.random.fork_rng():
        torch.manual_seed(config.seed)
        samples = vae.sample_prior(3 * num_images)

    fig = Figure(figsize=(12, 4.8), layout="constrained")
    left, right = fig.subfigures(1, 2, squeeze=False, width_ratios=[1.0, 1.1])[0]
    ax = left.subplots()
    steps = range(1, len(result.losses) + 1)
    ax.plot(steps, result.losses, lw=0.6, color="tab:blue", alpha=0.5, label="training loss (per step)")
    initial, final = result.initial_neg_elbo, result.neg_elbo
    ax.axhline(initial, color="grey", ls=":", label=f"held-out, untrained: {initial:.2f}")
    ax.axhline(final, color="tab:red", ls="--", label=f"held-out, trained: {final:.2f}")
    if baseline is not None:
        ax.axhline(
            baseline, color="tab:green", ls="-.", label=f"no latents (independent pixels): {baseline:.2f}"
        )
    ax.set_xlabel("SVI step")
    ax.set_ylabel("negative ELBO (nats per image)")
    top = max(result.initial_neg_elbo, result.neg_elbo) * 1.1
    ax.set_ylim(0.8 * min([result.neg_elbo, *result.losses[-50:]], default=result.neg_elbo), top)
    ax.set_title(
        f"{config.num_latents} latents x {config.num_classes} classes, estimator '{config.estimator}'"
    )
    twin = ax.twinx()
    twin.plot(steps, result.temperatures, color="tab:orange", lw=1.2, label="temperature")
    twin.set_ylabel("temperature", color="tab:orange")
    twin.set_ylim(0, max(result.temperatures, default=1.0) * 1.05)
    handles = ax.get_legend_handles_labels()[0] + twin.get_legend_handles_labels()[0]
    ax.legend(handles=handles, loc="upper right", fontsize="small")

    cmap = matplotlib.colormaps["gray_r"].with_extremes(bad="white")
    top_ax, bottom_ax = right.subplots(2, 1, height_ratios=[2, 3])
    pairs = image_grid(torch.cat([originals, reconstructions]), rows=2)
    top_ax.imshow(pairs.cpu().numpy(), cmap=cmap, vmin=0, vmax=1)
    top_ax.set_title("test digits (top) and their reconstructions (bottom)")
    bottom_ax.imshow(image_grid(samples, rows=3).cpu().numpy(), cmap=cmap, vmin=0, vmax=1)
    bottom_ax.set_title("samples from the prior (pixel probabilities)")
    for a in (top_ax, bottom_ax):
        a.set_axis_off()
    fig.savefig(path, dpi=110)
    return path
