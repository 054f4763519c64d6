"""Export a `SequenceClassifier` checkpoint as a standard Hugging Face model directory.

`python -m src.export CKPT OUT_DIR [--onnx]` writes the weights (model.safetensors), the config with the label
names, the tokenizer and a README.md model card, so `transformers.pipeline("text-classification", model=OUT_DIR)`
serves the model without this project's code. `--onnx` adds OUT_DIR/model.onnx, checked against PyTorch with
onnxruntime. The export is written beside OUT_DIR and renamed into place: a failure never leaves half of one.
"""

import argparse
import inspect
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Any

import torch
import transformers
from transformers import AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from src.model import SequenceClassifier
from src.utils.atomic import atomic_write
from src.utils.checkpoint_io import load_checkpoint
from src.utils.errors import UserInputError
from src.utils.pretrained import load_pretrained

ONNX_OPSET = 17
ONNX_TOLERANCE = 1e-4  # max abs logit difference accepted between onnxruntime and PyTorch
# a batch of unequal lengths, so the check exercises padding and both dynamic axes
ONNX_CHECK_TEXTS = (
    "The food was superb and the staff were very friendly.",
    "Awful.",
    "Okay place, poor service, but the price was good and we would visit again for the menu.",
)


class OnnxMismatchError(RuntimeError):
    """The ONNX model's logits differ from PyTorch's: the export is discarded rather than shipped wrong."""


def _load_checkpoint(ckpt_path: Path) -> dict[str, Any]:
    if not ckpt_path.is_file():
        raise UserInputError(f"checkpoint '{ckpt_path}' does not exist: pass the path of a .ckpt file")
    checkpoint = load_checkpoint(ckpt_path)
    if "hyper_parameters" not in checkpoint:
        raise UserInputError(f"'{ckpt_path}' is not a Lightning checkpoint of SequenceClassifier (no hyper_parameters)")
    return checkpoint


def configure_tokenizer(tokenizer: PreTrainedTokenizerBase, data_hparams: dict[str, Any]) -> str | None:
    """Make the exported tokenizer cut reviews as training did (`pipeline(..., truncation=True)` then reads the same
    tokens `predict` read). Returns a warning when the training truncation has no tokenizer equivalent."""
    if data_hparams.get("max_length"):
        tokenizer.model_max_length = int(data_hparams["max_length"])
    truncation = data_hparams.get("truncation", "head")
    tokenizer.truncation_side = "left" if truncation == "tail" else "right"
    if truncation not in ("head", "tail"):
        return (f"the model was trained with data.truncation={truncation}, which a Hugging Face tokenizer cannot "
                "do: the export keeps the first tokens of long reviews; for the training layout use "
                "`python -m src.cli predict`")
    return None


def _restore_module(checkpoint: dict[str, Any]) -> SequenceClassifier:
    """Rebuild the LightningModule from the checkpoint's hparams, uncompiled and in eval mode."""
    init_args = inspect.signature(SequenceClassifier.__init__).parameters
    # LightningCLI adds `_instantiator`/`_class_path`; only constructor arguments are passed on
    kwargs = {k: v for k, v in checkpoint["hyper_parameters"].items() if k in init_args}
    module = SequenceClassifier(**{**kwargs, "compile": False})  # tracing and saving want the plain model
    module.load_state_dict(checkpoint["state_dict"])
    return module.eval()


def _is_hub_id(name: str) -> bool:
    return name.count("/") <= 1 and not name.startswith((".", "/", "~", "package:")) and not Path(name).exists()


def _model_card(model: PreTrainedModel, checkpoint: dict[str, Any], ckpt_path: Path, title: str, onnx: bool,
                warning: str | None = None) -> str:
    """A short README.md so the directory says what it holds and where it came from."""
    base = checkpoint["hyper_parameters"]["model_name_or_path"]
    labels = model.config.id2label
    front_matter = ["library_name: transformers", "pipeline_tag: text-classification"]
    if _is_hub_id(base):  # the hub's base_model field only accepts hub ids
        front_matter.append(f"base_model: {base}")
    data = checkpoint.get("datamodule_hyper_parameters", {})
    lines = [
        "---", *front_matter, "---", "",
        f"# {title}", "",
        f"A sequence classifier with {len(labels)} labels, fine-tuned from `{base}`{_how(checkpoint)}.", "",
        "| id | label |", "| --- | --- |", *(f"| {i} | {labels[i]} |" for i in sorted(labels)), "",
        "## Source", "",
        f"- checkpoint: `{ckpt_path.resolve()}`",
        f"- global step {checkpoint.get('global_step', '?')}",
    ]
    if data.get("dataset"):
        lines.append(f"- dataset: `{data['dataset']}`, max_length {data.get('max_length', '?')} tokens, truncation "
                     f"{data.get('truncation', 'head')} (the tokenizer here is set to match)")
    if warning:
        lines += ["", f"Note: {warning}."]
    lines += [
        "", "## Usage", "", "```python", "from transformers import pipeline", "",
        'classifier = pipeline("text-classification", model="PATH/TO/THIS/DIR")',
        'classifier(["The food was great!"], truncation=True)  # truncation: reviews longer than the model accepts',
        "```", "",
    ]
    if onnx:
        onnx_note = (f"`model.onnx` (opset {ONNX_OPSET}) takes the tokenizer's outputs as int64 arrays with dynamic "
                     "batch and sequence axes, and returns `logits`.")
        lines += [onnx_note, ""]
    return "\n".join(lines)


def _how(checkpoint: dict[str, Any]) -> str:
    hp = checkpoint["hyper_parameters"]
    if hp.get("peft") == "lora":
        return f" with LoRA (r={hp.get('lora_r')}, alpha={hp.get('lora_alpha')}; adapters merged into the weights)"
    return ""


class _LogitsOnly(torch.nn.Module):
    """Positional inputs in the tokenizer's order, logits out: the signature the ONNX graph gets."""

    def __init__(self, model: PreTrainedModel, input_names: list[str]) -> None:
        super().__init__()
        self.model, self.input_names = model, input_names

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.model(**dict(zip(self.input_names, inputs, strict=True))).logits


def _require_onnx() -> None:
    """Fail before any work when the ONNX packages are missing."""
    try:
        import onnx  # noqa: F401  (torch.onnx.export writes through it)
        import onnxruntime  # noqa: F401
    except ImportError as err:
        raise UserInputError(f"--onnx needs the '{err.name}' package: run `pip install onnx onnxruntime`") from None


def export_onnx(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, path: Path) -> float:
    """Write `model` to `path` as ONNX, then check onnxruntime's logits against PyTorch's; returns the max diff."""
    import numpy as np
    import onnxruntime

    model.eval()
    example = tokenizer(["an example review", "a second, longer example review"], padding=True, return_tensors="pt")
    names = list(example.keys())
    wrapper = _LogitsOnly(model, names).eval()  # exporting a module in train mode would flip the model back to it
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # shape asserts it bakes in; the check below rules
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter: no onnxscript dependency
        warnings.filterwarnings("ignore", "Exporting aten::index operator")  # its indices are aranges, never < 0
        torch.onnx.export(
            wrapper, tuple(example[name] for name in names), str(path), input_names=names, output_names=["logits"],
            dynamic_axes={**{name: {0: "batch", 1: "sequence"} for name in names}, "logits": {0: "batch"}},
            opset_version=ONNX_OPSET, dynamo=False,
        )
    check = tokenizer(list(ONNX_CHECK_TEXTS), padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = model(**check).logits.float().numpy()
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (actual,) = session.run(["logits"], {name: check[name].numpy().astype(np.int64) for name in names})
    diff = float(np.abs(actual - expected).max())
    if not diff < ONNX_TOLERANCE:  # also catches NaN
        raise OnnxMismatchError(f"ONNX logits differ from PyTorch by {diff:.2e} (limit {ONNX_TOLERANCE:g}); "
                                "nothing was written")
    return diff


def export_checkpoint(ckpt_path: str | os.PathLike, out_dir: str | os.PathLike, onnx: bool = False) -> Path:
    """Write the checkpoint's model, config, tokenizer and model card (and model.onnx) to a new `out_dir`."""
    ckpt_path, out = Path(ckpt_path), Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserInputError(f"export directory '{out}' already exists and is not empty: "
                             "pass a new OUT_DIR or remove the old export first")
    if onnx:
        _require_onnx()
    checkpoint = _load_checkpoint(ckpt_path)
    module = _restore_module(checkpoint)
    model = module.merged_model()  # a LoRA run's adapters folded in: a plain model that loads without peft
    tokenizer = load_pretrained(AutoTokenizer.from_pretrained, module.hparams.model_name_or_path)

    warning = configure_tokenizer(tokenizer, checkpoint.get("datamodule_hyper_parameters", {}))
    if warning:
        warnings.warn(warning, stacklevel=2)
    try:
        with atomic_write(out, directory=True, overwrite=not out.exists() or not any(out.iterdir())) as staging:
            model.save_pretrained(staging)  # safetensors: transformers 5 writes nothing else
            tokenizer.save_pretrained(staging)
            if onnx:
                export_onnx(model, tokenizer, staging / "model.onnx")
            (staging / "README.md").write_text(_model_card(model, checkpoint, ckpt_path, out.name, onnx, warning))
    except FileExistsError:
        raise UserInputError(f"export directory '{out}' was filled while exporting: "
                             "pass a new OUT_DIR or remove it first") from None
    return out


def main(args: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m src.export", description=__doc__.splitlines()[0])
    parser.add_argument("ckpt", help="Lightning checkpoint (.ckpt) of a SequenceClassifier")
    parser.add_argument("out_dir", help="new (or empty) directory for the Hugging Face model")
    parser.add_argument("--onnx", action="store_true", help="also write model.onnx, checked with onnxruntime")
    parsed = parser.parse_args(args)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.getLogger("transformers").setLevel(logging.ERROR)  # the base model's load report is about its old head
    transformers.utils.logging.disable_progress_bar()  # loading/saving bars for a few seconds' work
    try:
        out = export_checkpoint(parsed.ckpt, parsed.out_dir, onnx=parsed.onnx)
    except (UserInputError, OnnxMismatchError) as err:
        sys.exit(f"error: {err}")
    print(out)


if __name__ == "__main__":
    main()
