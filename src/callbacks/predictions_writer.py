"""`PredictionsWriter`: one predictions file per `predict` run, rows in input order, written by rank 0.

Eval batches are sorted by length and sharded across ranks, so each rank predicts a scattered subset; every
prediction carries its row index (`idx`), which puts the rows back in input order once gathered on rank 0.
Columns: idx, pred_label (class id), pred_name (the model's `id2label`), prob_<name> per class, text.
"""

import csv
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import torch
import torch.distributed as dist
from lightning.pytorch.callbacks import BasePredictionWriter

from src.utils.atomic import atomic_write


class PredictionsWriter(BasePredictionWriter):
    """Writes `predictions.jsonl` (or `.csv`) into the run directory after `predict`.

    Args:
        output_format: "jsonl" (one JSON object a line) or "csv"; both have the same columns.
        include_text: add each row's text (read from the data module's `predict_texts()`).
        output_dir: where to write; default: the run directory (`trainer.log_dir`).
        filename: file name without extension. An existing file is never overwritten: the new one gets a
            suffix (`predictions-1.jsonl`, `predictions-2.jsonl`, ...).
    """

    def __init__(
        self,
        output_format: Literal["jsonl", "csv"] = "jsonl",
        include_text: bool = True,
        output_dir: str | None = None,
        filename: str = "predictions",
    ) -> None:
        super().__init__(write_interval="epoch")
        if output_format not in ("jsonl", "csv"):
            raise ValueError(f"output_format must be 'jsonl' or 'csv', got {output_format!r}")
        self.output_format = output_format
        self.include_text = include_text
        self.output_dir = output_dir
        self.filename = filename
        self.path: Path | None = None  # the file written by the last predict run (rank 0)

    def write_on_epoch_end(
        self,
        trainer: "pl.Trainer",
        pl_module: "pl.LightningModule",
        predictions: Sequence[Any],
        batch_indices: Sequence[Any],
    ) -> None:
        out_dir = Path(self.output_dir or trainer.log_dir or trainer.default_root_dir)  # log_dir: all ranks ask
        idx, labels, probs = _gather(*_concat(predictions), world_size=trainer.world_size)
        if not trainer.is_global_zero:
            return
        order = torch.argsort(idx)
        idx, labels, probs = idx[order], labels[order], probs[order]
        texts = self._texts(trainer)
        expected = len(texts) if texts is not None else len(idx)
        if not torch.equal(idx, torch.arange(expected)):
            raise RuntimeError(f"predictions cover {len(idx)} rows ({len(torch.unique(idx))} distinct) but the "
                               f"predict split has {expected}: each row must be predicted exactly once")
        names = label_names(pl_module, probs.shape[1])
        rows = _rows(idx, labels, probs, names, texts)
        columns = ["idx", "pred_label", "pred_name", *(f"prob_{name}" for name in names)]
        columns += ["text"] if texts is not None else []
        self.path = _write_new_file(out_dir, self.filename, self.output_format, rows, columns)
        print(f"Predictions ({len(idx)} rows): {self.path}")

    def _texts(self, trainer: "pl.Trainer") -> list[str] | None:
        if not self.include_text:
            return None
        predict_texts = getattr(trainer.datamodule, "predict_texts", None)
        return predict_texts() if predict_texts is not None else None


def _concat(predictions: Sequence[Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """This rank's batches (`predict_step` outputs) as three tensors: row index, predicted label, probabilities."""
    batches = [batch for group in predictions for batch in (group if isinstance(group, list) else [group])]
    if not batches:
        return torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.long), torch.empty(0, 0)
    probs = torch.cat([batch["probs"].float().cpu() for batch in batches])
    idx = torch.cat([batch["idx"].long().cpu() for batch in batches])
    labels = torch.cat([batch["label"].long().cpu() if "label" in batch else batch["probs"].argmax(-1).cpu()
                        for batch in batches])
    return idx, labels, probs


def _gather(
    idx: torch.Tensor, labels: torch.Tensor, probs: torch.Tensor, world_size: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every rank's predictions on every rank (a collective under DDP; gloo and nccl both carry objects)."""
    if world_size == 1 or not dist.is_available() or not dist.is_initialized():
        return idx, labels, probs
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, (idx, labels, probs))
    parts = [part for part in gathered if len(part[0])]  # a rank with no rows has a (0, 0) probs tensor
    if not parts:
        return idx, labels, probs
    return tuple(torch.cat([part[i] for part in parts]) for i in range(3))  # type: ignore[return-value]


def label_names(pl_module: "pl.LightningModule", num_labels: int) -> list[str]:
    """The model's own class names (HF `id2label`), so the file says what the model was trained to output."""
    config = getattr(getattr(pl_module, "model", None), "config", None)
    id2label = getattr(config, "id2label", None) or {}
    return [str(id2label.get(i, id2label.get(str(i), i))) for i in range(num_labels)]


def _rows(
    idx: torch.Tensor, labels: torch.Tensor, probs: torch.Tensor, names: list[str], texts: list[str] | None
) -> Iterator[dict[str, Any]]:
    # float32 printed at its shortest round-trip form: 0.20784132, not 0.20784132182598114
    probs_text = probs.numpy().astype(str)
    for row, (i, label) in enumerate(zip(idx.tolist(), labels.tolist(), strict=True)):
        record: dict[str, Any] = {"idx": i, "pred_label": label, "pred_name": names[label]}
        record.update({f"prob_{name}": float(p) for name, p in zip(names, probs_text[row], strict=True)})
        if texts is not None:
            record["text"] = texts[i]
        yield record


def _write_new_file(
    out_dir: Path, stem: str, output_format: str, rows: Iterator[dict[str, Any]], columns: list[str]
) -> Path:
    """Write the file whole, under the first free name (`stem.jsonl`, `stem-1.jsonl`, ...): never overwriting."""
    rows = list(rows)
    for n in range(10_000):
        path = out_dir / (f"{stem}.{output_format}" if n == 0 else f"{stem}-{n}.{output_format}")
        if path.exists():
            continue
        try:
            with atomic_write(path, overwrite=False) as temp, open(temp, "w", newline="", encoding="utf-8") as file:
                if output_format == "csv":
                    writer = csv.DictWriter(file, fieldnames=columns)
                    writer.writeheader()
                    writer.writerows(rows)
                else:
                    file.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
            return path
        except FileExistsError:  # taken since the check above
            continue
    raise FileExistsError(f"no free name for {stem}.{output_format} in {out_dir}")
