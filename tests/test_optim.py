"""Layer-wise learning-rate decay: each parameter's lr by its depth, for every supported architecture; the schedule
scales every group; bad values and unknown architectures are one-line errors; the curves reach TensorBoard."""

import re
from functools import partial
from pathlib import Path

import pytest
import torch
from transformers import AlbertConfig, AutoModelForSequenceClassification

from src.model import SequenceClassifier
from src.optim import parameter_groups
from src.utils.errors import UserInputError
from tests.cli_helpers import REPO, run_cli, scalar_points, tiny_run_args
from tests.fixtures import ARCHITECTURES, tiny_config
from tests.test_model import lr_trace, scheduled

LR, DECAY, LAYERS = 1e-3, 0.8, 3


def expected_exponent(name: str) -> int:
    """The decay exponent the issue asks for, read off the parameter name independently of the table: layer l of L
    gets d**(L - l), embeddings (DeBERTa's shared relative embeddings too) d**(L + 1), the head and whatever sits
    above the last layer (pooler, final norm) d**0."""
    layer = re.search(r"\.layers?\.(\d+)\.", name)
    if layer:
        return LAYERS - int(layer.group(1))
    if "conv" in name:
        return LAYERS  # DeBERTa-v2's convolution runs with layer 0
    if re.search(r"(^|\.)embeddings|rel_embeddings|encoder\.LayerNorm", name):
        return LAYERS + 1
    assert re.match(r"(classifier|pre_classifier|pooler|head)\.|\w+\.(pooler|final_norm)\.", name), name
    return 0


@pytest.mark.parametrize("model_type", ARCHITECTURES)
def test_each_parameter_gets_the_lr_of_its_depth(model_type: str) -> None:
    model = AutoModelForSequenceClassification.from_config(tiny_config(model_type, num_layers=LAYERS))
    groups = parameter_groups(model, DECAY)
    optimizer = torch.optim.AdamW(groups, lr=LR, weight_decay=0.01)
    for group in optimizer.param_groups:  # what configure_optimization does
        group["lr"] *= group["lr_scale"]
    group_of = {id(p): group for group in optimizer.param_groups for p in group["params"]}
    names = [name for name, _ in model.named_parameters()]
    assert len(group_of) == len(names) == sum(len(g["params"]) for g in groups)  # each parameter exactly once
    for name, p in model.named_parameters():
        group = group_of[id(p)]
        assert group["lr"] == pytest.approx(LR * DECAY ** expected_exponent(name)), (name, group["name"])
        assert group["weight_decay"] == (0.0 if p.ndim < 2 else 0.01), name
        assert group["name"].endswith("_no_decay") == (p.ndim < 2)
    layer_names = {g["name"] for g in groups if g["name"].startswith("layer")}
    assert {"head", "embeddings", "layer00", f"layer{LAYERS - 1:02d}"} <= {g["name"] for g in groups}
    assert layer_names <= {f"layer{i:02d}{suffix}" for i in range(LAYERS) for suffix in ("", "_no_decay")}


def test_without_decay_the_groups_are_decay_and_no_decay(tiny_bert: Path) -> None:
    model = SequenceClassifier(str(tiny_bert))
    assert [g["name"] for g in model.parameter_groups()] == ["decay", "no_decay"]


def test_the_schedule_scales_every_group_from_its_own_lr(tiny_bert: Path) -> None:
    model = SequenceClassifier(str(tiny_bert), optimizer=partial(torch.optim.AdamW, lr=LR), layer_lr_decay=0.5,
                               warmup_steps=2)
    optimizer, scheduler = scheduled(model, 10)
    assert optimizer.defaults["lr"] == LR  # model.optimizer.lr stays the run's one learning rate
    lrs = {g["name"]: g["initial_lr"] for g in optimizer.param_groups}  # the peaks the schedule scales
    # tiny BERT: 2 layers; the pooler goes with the head
    assert lrs == pytest.approx({"head": LR, "head_no_decay": LR, "layer01": LR / 2, "layer01_no_decay": LR / 2,
                                 "layer00": LR / 4, "layer00_no_decay": LR / 4, "embeddings": LR / 8,
                                 "embeddings_no_decay": LR / 8})
    head, embeddings = [next(g for g in optimizer.param_groups if g["name"] == n) for n in ("head", "embeddings")]
    trace = []
    for _ in range(6):
        trace.append((head["lr"], embeddings["lr"]))
        optimizer.step()
        scheduler.step()
    assert [h for h, _ in trace] == pytest.approx([0, LR / 2, LR, LR * 7 / 8, LR * 6 / 8, LR * 5 / 8])
    assert all(e == pytest.approx(h / 8) for h, e in trace)
    assert lr_trace(optimizer, scheduler, 4)[-1] == 0  # the schedule reaches 0 at the last step in every group


@pytest.mark.parametrize("decay", [0.0, -0.5, 1.5])
def test_layer_lr_decay_outside_0_1_is_a_user_error(tiny_bert: Path, decay: float) -> None:
    with pytest.raises(UserInputError, match=rf"model.layer_lr_decay={decay} must be in \(0, 1\]"):
        SequenceClassifier(str(tiny_bert), layer_lr_decay=decay)


def test_unknown_architecture_is_a_user_error() -> None:
    albert = AutoModelForSequenceClassification.from_config(AlbertConfig(
        vocab_size=64, embedding_size=16, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64))
    with pytest.raises(UserInputError, match=r"model.layer_lr_decay does not know where model_type 'albert' keeps "
                                             r"its layers .*src/utils/architectures.py"):
        parameter_groups(albert, 0.9)
    parameter_groups(albert)  # without the option, any architecture trains


def test_llrd_recipe_logs_one_lr_curve_per_group(tiny_bert: Path, tiny_yelp: Path, tmp_path: Path) -> None:
    """The stacked recipe through the CLI: TensorBoard shows each group's lr, each layer a decay below the next."""
    run_cli(["fit", *tiny_run_args(tiny_bert, tiny_yelp), "--config", str(REPO / "configs/recipes/llrd.yaml"),
             "--model.optimizer.lr", "2e-5", "--trainer.max_steps", "3", "--trainer.log_every_n_steps", "1"],
            cwd=tmp_path)
    curves = {tag.removeprefix("lr-AdamW/"): [v for _, v in points]
              for tag, points in scalar_points(tmp_path / "logs/yelp_bert/version_0").items()
              if tag.startswith("lr-AdamW/")}
    assert set(curves) == {f"{g}{s}" for g in ("head", "layer01", "layer00", "embeddings") for s in ("", "_no_decay")}
    assert curves["head"][0] == pytest.approx(2e-5)
    for upper, lower in (("head", "layer01"), ("layer01", "layer00"), ("layer00", "embeddings")):
        assert curves[lower] == pytest.approx([v * 0.95 for v in curves[upper]])
