"""The seed papers' alignment pictures, as PNG files (matplotlib's Agg backend: no display needed).

- t-SNE of image and text EOS embeddings coloured by modality (Ak et al., Fig. 1);
- an image with each visual token's cell labelled by the word it recalls, green when that word names
  what covers the cell, red when not (SEA, Fig. 1-2 and 6);
- per caption token, a heatmap over the token grid of its cosine with each visual token (CG-VLM, Fig. 2).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import torch  # noqa: E402
from PIL import Image  # noqa: E402

GOOD, BAD, NEUTRAL = "#1a9850", "#d73027", "#ffffff"


def plot_tsne(image_embeds: torch.Tensor, text_embeds: torch.Tensor, path: Path, seed: int = 0) -> Path:
    from sklearn.manifold import TSNE  # scikit-learn takes ~2 s to import; only the t-SNE picture needs it

    points = torch.nn.functional.normalize(torch.cat([image_embeds, text_embeds]).double(), dim=-1).numpy()
    perplexity = max(2.0, min(30.0, (len(points) - 1) / 3))
    xy = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(points)
    n = len(image_embeds)
    figure, axes = plt.subplots(figsize=(5, 5))
    axes.scatter(xy[:n, 0], xy[:n, 1], s=8, c="#4575b4", label="image (EOS)")
    axes.scatter(xy[n:, 0], xy[n:, 1], s=8, c="#f46d43", label="caption (EOS)")
    axes.set_xticks([]), axes.set_yticks([])
    axes.legend(loc="best")
    axes.set_title("t-SNE of EOS embeddings")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def plot_recalled_words(image: Image.Image, words: list[list[str]], correct: list[list[bool]] | None,
                        path: Path) -> Path:
    """`words` [rows][cols]: the recalled word per cell; `correct` the same shape, or None (no ground truth)."""
    rows, cols = len(words), len(words[0])
    figure, axes = plt.subplots(figsize=(6, 6))
    axes.imshow(image, extent=(0, cols, rows, 0))
    for row in range(rows):
        for col in range(cols):
            colour = NEUTRAL if correct is None else (GOOD if correct[row][col] else BAD)
            axes.add_patch(plt.Rectangle((col, row), 1, 1, fill=False, edgecolor=colour, linewidth=0.8))
            axes.text(col + 0.5, row + 0.5, words[row][col], ha="center", va="center", fontsize=6,
                      color=colour, bbox={"facecolor": "black", "alpha": 0.45, "pad": 0.5, "linewidth": 0})
    axes.set_xlim(0, cols), axes.set_ylim(rows, 0)
    axes.set_xticks([]), axes.set_yticks([])
    axes.set_title("word recalled by each visual token" + ("" if correct is None else " (green = correct)"))
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def plot_token_heatmaps(image: Image.Image, token_texts: list[str], cosines: torch.Tensor, path: Path,
                        max_tokens: int = 12) -> Path:
    """`cosines` [M, rows, cols]: caption token m against every visual token; one panel per token."""
    shown = min(max_tokens, len(token_texts))
    cols = min(4, shown + 1)
    rows = -(-(shown + 1) // cols)
    figure, grid = plt.subplots(rows, cols, figsize=(2.4 * cols, 2.4 * rows), squeeze=False)
    panels = grid.flatten()
    panels[0].imshow(image)
    panels[0].set_title("image", fontsize=8)
    low, high = float(cosines[:shown].min()), float(cosines[:shown].max())
    for index in range(shown):
        panel = panels[index + 1]
        shown_map = panel.imshow(cosines[index].numpy(), vmin=low, vmax=high, cmap="viridis")
        panel.set_title(repr(token_texts[index].strip() or token_texts[index]), fontsize=8)
    for panel in panels:
        panel.set_xticks([]), panel.set_yticks([])
    for panel in panels[shown + 1:]:
        panel.axis("off")
    figure.colorbar(shown_map, ax=panels.tolist(), shrink=0.6, label="cosine")
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
