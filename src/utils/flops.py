"""FLOP counts and peak FLOP/s per device: the MFU arithmetic shared by ThroughputMonitor and benchmarks/.

Peak FLOP/s: `lightning.fabric.utilities.throughput.get_available_flops` is reused as a fallback only, because
for the GPUs this template targets it does not fit (lightning 2.6): a plain "NVIDIA H200" (the H200 SXM's name)
is not recognised (None), its H200 entries are with-sparsity figures (2x the dense peak), "NVIDIA L40S" matches
its "l4" entry, and its RTX 4090 bf16 figure is the fp32 rate, not the tensor-core one. `_PEAK_FLOPS` below
holds dense tensor-core figures from NVIDIA's datasheets for those GPUs; other GPUs go to Lightning's table.
"""

import re
from dataclasses import dataclass

import torch
from lightning.fabric.utilities.throughput import get_available_flops
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn

# Dense (no sparsity) peak FLOP/s per device, by matmul dtype.
_PEAK_FLOPS: dict[str, dict[str, float]] = {
    "h100/h200 sxm": {"bf16": 989.4e12, "fp16": 989.4e12, "tf32": 494.7e12, "fp32": 66.9e12},
    "h100/h200 nvl": {"bf16": 835.5e12, "fp16": 835.5e12, "tf32": 417.5e12, "fp32": 60e12},
    "h100 pcie": {"bf16": 756e12, "fp16": 756e12, "tf32": 378e12, "fp32": 51.2e12},
    "a100": {"bf16": 312e12, "fp16": 312e12, "tf32": 156e12, "fp32": 19.5e12},
    "l40s": {"bf16": 362.05e12, "fp16": 362.05e12, "tf32": 183e12, "fp32": 91.6e12},
    "l4": {"bf16": 121e12, "fp16": 121e12, "tf32": 60e12, "fp32": 30.3e12},
    "a10/a10g": {"bf16": 125e12, "fp16": 125e12, "tf32": 62.5e12, "fp32": 31.2e12},  # A10 datasheet
    "v100 sxm": {"fp16": 125e12, "fp32": 15.7e12},  # no bf16 or tf32 on Volta
    "v100 pcie": {"fp16": 112e12, "fp32": 14e12},
    "v100s pcie": {"fp16": 130e12, "fp32": 16.4e12},
    "rtx 4090": {"bf16": 165.2e12, "fp16": 165.2e12, "tf32": 82.6e12, "fp32": 82.6e12},  # fp32 accumulate
}
# `torch.cuda.get_device_name` -> table key; first match wins, so specific variants come first.
_GPU_NAME_PATTERNS: list[tuple[str, str]] = [
    (r"\bg?h[12]00\b.*\bnvl\b", "h100/h200 nvl"),
    (r"\bh100\b.*\b(pcie|hbm2e)\b", "h100 pcie"),
    (r"\bg?h[12]00\b", "h100/h200 sxm"),  # "NVIDIA H100 80GB HBM3", "NVIDIA H200", "NVIDIA GH200 480GB"
    (r"\ba100\b", "a100"),
    (r"\bl40s\b", "l40s"),
    (r"\bl4\b", "l4"),
    (r"\ba10g?\b", "a10/a10g"),
    (r"\bv100s\b", "v100s pcie"),
    (r"\bv100\b.*\bpcie\b", "v100 pcie"),
    (r"\bv100\b", "v100 sxm"),
    (r"\brtx 4090\b", "rtx 4090"),
]
_TORCH_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32, "tf32": torch.float32}


def lookup_peak_flops(device_name: str, dtype: str) -> float | None:
    """Dense peak FLOP/s of one GPU named like `torch.cuda.get_device_name` for `dtype` ("bf16", "fp16", "tf32",
    "fp32"); None when the GPU or the dtype is not in `_PEAK_FLOPS`."""
    name = device_name.lower()
    for pattern, key in _GPU_NAME_PATTERNS:
        if re.search(pattern, name):
            return _PEAK_FLOPS[key].get(dtype)
    return None


def matmul_dtype(precision: str) -> str | None:
    """The dtype matmuls run in under a Lightning `precision` ("bf16-mixed" -> "bf16"); fp32 before the TF32 check."""
    for prefix, dtype in (("bf16", "bf16"), ("16", "fp16"), ("32", "fp32")):
        if precision.startswith(prefix):
            return dtype
    return None  # 64-true, transformer-engine (fp8), ...: not in the table


def _tf32_enabled() -> bool:
    try:
        return torch.get_float32_matmul_precision() != "highest"
    except RuntimeError:  # torch >= 2.9 refuses when the legacy and the new precision APIs were both used
        return getattr(torch.backends.cuda.matmul, "fp32_precision", "") == "tf32"


def peak_flops_per_device(device: torch.device, precision: str) -> float | None:
    """Dense peak FLOP/s of `device` for `precision`: our table, then Lightning's; None on CPU or when unknown."""
    dtype = matmul_dtype(precision)
    if device.type != "cuda" or dtype is None:
        return None
    if dtype == "fp32" and _tf32_enabled() and torch.cuda.get_device_capability(device) >= (8, 0):
        dtype = "tf32"  # fp32 matmuls run on TF32 tensor cores (Ampere and later)
    peak = lookup_peak_flops(torch.cuda.get_device_name(device), dtype)
    if peak is None:
        try:
            peak = get_available_flops(device, _TORCH_DTYPES[dtype])  # warns itself when it does not know either
        except RuntimeError:  # its fp32 path reads the matmul precision, which newer torch may refuse
            peak = None
    return float(peak) if peak else None


def non_embedding_params(module: nn.Module) -> int:
    """Parameters outside `nn.Embedding` tables: lookups cost no FLOPs (as in Kaplan et al.'s N). Tied weights
    count once, so a decoder whose LM head is tied to its embedding would need its head added back."""
    embedding = {id(p) for m in module.modules() if isinstance(m, nn.Embedding) for p in m.parameters(recurse=False)}
    return sum(p.numel() for p in module.parameters() if id(p) not in embedding)


@dataclass(frozen=True)
class FlopModel:
    """Training FLOPs of a transformer: 6 N per token (forward 2 N, backward 4 N) plus the attention scores.

    Attention (QK^T and AV) is 4 s^2 h FLOPs per layer for a row of length s forward, x3 with backward: 12 L h s^2.
    The pooler and classifier run on one token per row but are counted on every token (<1% for BERT-base);
    activation recomputation (gradient checkpointing) is not counted, as MFU conventionally leaves it out.
    """

    n_params: int  # non-embedding
    n_layers: int = 0
    hidden: int = 0

    @classmethod
    def from_module(cls, pl_module: nn.Module) -> "FlopModel":
        """N from the module (its `.model` when it wraps one); layers and width from the HF config when present."""
        module = getattr(pl_module, "model", pl_module)
        config = getattr(module, "config", None)
        n_layers, hidden = getattr(config, "num_hidden_layers", 0) or 0, getattr(config, "hidden_size", 0) or 0
        if not (n_layers and hidden):
            rank_zero_warn("ThroughputMonitor: no HF config with num_hidden_layers/hidden_size; attention FLOPs "
                           "are left out of MFU")
        return cls(non_embedding_params(module), n_layers, hidden)

    def training_flops(self, tokens: float, sum_sq_lengths: float) -> float:
        """FLOPs of forward + backward over `tokens` tokens in rows whose squared lengths sum to `sum_sq_lengths`
        (a padded batch of B rows of length s: tokens = B s, sum_sq_lengths = B s^2)."""
        return 6 * self.n_params * tokens + 12 * self.n_layers * self.hidden * sum_sq_lengths


@dataclass(frozen=True)
class Counts:
    """What all ranks processed in one measured span (summed over ranks; `seconds` is the wall time)."""

    steps: int
    samples: float
    padded_tokens: float
    padded_sq: float  # sum over rows of padded_length^2
    real_tokens: float
    real_sq: float  # sum over rows of real_length^2
    seconds: float


def throughput_metrics(counts: Counts, flop_model: FlopModel, peak_flops: float | None = None,
                       world_size: int = 1, prefix: str = "perf/") -> dict[str, float]:
    """Rates over `counts`. FLOP/s are summed over ranks, so MFU divides by `world_size` x per-device peak.

    `mfu` counts the FLOPs spent, padding included; `mfu_real` only those on real tokens (the useful share).
    """
    c, seconds = counts, counts.seconds
    spent, useful = (flop_model.training_flops(c.padded_tokens, c.padded_sq),
                     flop_model.training_flops(c.real_tokens, c.real_sq))
    metrics = {
        "samples_per_sec": c.samples / seconds,
        "real_tokens_per_sec": c.real_tokens / seconds,
        "padded_tokens_per_sec": c.padded_tokens / seconds,
        "padding_ratio": 1.0 - c.real_tokens / c.padded_tokens,
        "sec_per_step": seconds / c.steps,
        "tflops_per_device": spent / seconds / world_size / 1e12,
    }
    if peak_flops:
        metrics["mfu"] = spent / seconds / (world_size * peak_flops)
        metrics["mfu_real"] = useful / seconds / (world_size * peak_flops)
    return {prefix + key: value for key, value in metrics.items()}
