"""Confusion-matrix views: per-class precision/recall, a markdown table and a heatmap image (drawn with Pillow,
a tensorboard dependency, so no matplotlib)."""

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch


def precision_recall(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class precision and recall from a confusion matrix (rows: true class, columns: predicted).

    A class never predicted (or never present) gets 0, as torchmetrics' default `zero_division=0` does.
    """
    matrix = matrix.double()
    hits = matrix.diagonal()
    precision = torch.where(matrix.sum(0) > 0, hits / matrix.sum(0).clamp(min=1), 0.0)
    recall = torch.where(matrix.sum(1) > 0, hits / matrix.sum(1).clamp(min=1), 0.0)
    return precision, recall


def confusion_markdown(matrix: torch.Tensor, names: Sequence[str]) -> str:
    """The confusion matrix as a markdown table, with recall per row and precision per column."""
    precision, recall = precision_recall(matrix)
    rows = [
        "| true \\ predicted | " + " | ".join(names) + " | recall |",
        "| --- |" + " ---: |" * (len(names) + 1),
        *(f"| **{name}** | " + " | ".join(str(int(v)) for v in matrix[i]) + f" | {recall[i]:.3f} |"
          for i, name in enumerate(names)),
        "| precision | " + " | ".join(f"{p:.3f}" for p in precision) + " | |",
    ]
    total = int(matrix.sum())
    return "\n".join([*rows, "", f"{total} examples, accuracy {float(matrix.diagonal().sum()) / max(total, 1):.4f}"])


def confusion_image(matrix: torch.Tensor, names: Sequence[str]) -> np.ndarray:
    """An RGB (H, W, 3) uint8 heatmap: rows are true classes, columns predictions, shaded by share of the row."""
    from PIL import Image, ImageDraw  # a tensorboard dependency

    n = len(names)
    cell = max(12, min(64, 640 // n))
    font = _font(max(9, min(16, cell // 3)))
    label_width = max(int(font.getlength(name)) for name in [*names, "true"]) + 12
    top = label_width  # column labels are the same names, turned 90 degrees
    legend = "rows: true class, columns: predicted"
    footer = int(font.size * 1.8) if hasattr(font, "size") else 20
    width = max(label_width + n * cell + 8, int(font.getlength(legend)) + 16)
    image = Image.new("RGB", (width, top + n * cell + footer), "white")
    draw = ImageDraw.Draw(image)
    counts = matrix.long()
    shares = counts.double() / counts.sum(1, keepdim=True).clamp(min=1)
    for i in range(n):
        y = top + i * cell
        draw.text((label_width - 6, y + cell / 2), names[i], fill="black", font=font, anchor="rm")
        for j in range(n):
            x = label_width + j * cell
            share = float(shares[i, j])
            color = tuple(round(255 + share * (c - 255)) for c in (8, 48, 107))  # white to dark blue
            draw.rectangle((x, y, x + cell - 1, y + cell - 1), fill=color, outline=(220, 220, 220))
            if cell >= 24:
                draw.text((x + cell / 2, y + cell / 2), str(int(counts[i, j])), font=font, anchor="mm",
                          fill="white" if share > 0.5 else "black")
    for j, name in enumerate(names):  # column labels, drawn flat then turned to read bottom-up
        width = int(font.getlength(name)) + 2
        label = Image.new("RGB", (width, cell), "white")
        ImageDraw.Draw(label).text((0, cell / 2), name, fill="black", font=font, anchor="lm")
        label = label.rotate(90, expand=True)
        image.paste(label, (label_width + j * cell, top - 6 - width))
    draw.text((8, top + n * cell + footer / 2), legend, fill="gray", font=font, anchor="lm")
    return np.asarray(image)


def _font(size: int) -> Any:
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1: a scalable font
    except TypeError:
        return ImageFont.load_default()


