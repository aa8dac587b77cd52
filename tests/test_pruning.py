"""Structured pruning (``prune_ratio``, ``prune_after_steps``; ``autotune.knobs.structured``):
the units each built-in model family has, that the cut is exact (the pruned model computes what
the dense model computes with those units' out-weights zeroed), that the largest units stay,
that pruning during training carries the optimizer on, and what the knob does to a trial, to
``autotune.configure`` and to the memory prediction."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from torch import nn

from autotune import configure, objective
from autotune.errors import ConfigError
from autotune.knobs import (
    build_optimizer,
    build_scheduler,
    count_parameters,
    find_units,
    optimizer_step,
    prune_structured,
    units_removed,
)
from autotune.knobs.structured import kept_units
from autotune.memory import TraceCache, predict_peak
from autotune.recipe import Recipe
from autotune.tasks import Task
from autotune.tasks.mnist import SmallCNN
from autotune.train import TrialLimits, run_trial
from examples.review_lm import ByteTransformer
from tests.toy_task import make_toy_task

# -- the model families -----------------------------------------------------------------------


def tiny_bert() -> nn.Module:
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=4, intermediate_size=48, max_position_embeddings=16,
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, num_labels=2)
    return BertForSequenceClassification(config)


def tiny_gpt() -> nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(vocab_size=50, n_positions=16, n_embd=32, n_layer=2, n_head=4,
                        n_inner=48, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return GPT2LMHeadModel(config)


def tiny_encoder_layer() -> nn.Module:
    return nn.TransformerEncoderLayer(16, 2, 40, dropout=0.0, batch_first=True)


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(6, 20), nn.GELU(), nn.Dropout(0.0), nn.Linear(20, 3))


def tokens() -> torch.Tensor:
    return torch.randint(0, 50, (2, 8), generator=torch.Generator().manual_seed(1))


# name -> (factory, input, the groups as (units, unit size, parameters one unit holds))
D, H = 32, 48  # tiny BERT/GPT width and feed-forward size; 4 heads of 8
FAMILIES = {
    "bert": (tiny_bert, tokens, [(H, 1, D + 1 + D), (4, 8, 8 * (3 * (D + 1) + D))] * 2),
    "gpt": (tiny_gpt, tokens, [(4, 8, 8 * (3 * (D + 1) + D)), (H, 1, D + 1 + D)] * 2),
    # conv1 (1 -> 16, 3x3) -> conv2 (-> 32): an output channel is 9 weights + a bias in conv1
    # and 32 x 9 in conv2; fc1 (800 -> 64) -> fc2 (-> 10).
    "mnist": (SmallCNN, lambda: torch.randn(2, 1, 28, 28), [(16, 1, 9 + 1 + 32 * 9),
                                                             (64, 1, 800 + 1 + 10)]),
    "review_lm": (lambda: ByteTransformer(width=16, layers=2, heads=2),
                  lambda: torch.randint(1, 256, (2, 8)), [(64, 1, 16 + 1 + 16)] * 2),
    "encoder_layer": (tiny_encoder_layer, lambda: torch.randn(2, 5, 16),
                      [(40, 1, 16 + 1 + 16)]),
    "sequential": (mlp, lambda: torch.randn(4, 6), [(20, 1, 6 + 1 + 3)]),
}


def built(name: str) -> nn.Module:
    torch.manual_seed(0)
    return FAMILIES[name][0]().eval()


def output(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out = model(x)
    return out.logits if hasattr(out, "logits") else out


@pytest.mark.parametrize("ratio", [0.25, 0.5])
@pytest.mark.parametrize("name", FAMILIES)
def test_each_family_loses_round_ratio_units_per_group_and_their_parameters(name, ratio):
    model = built(name)
    groups = find_units(model)
    expected_groups = FAMILIES[name][2]
    assert [(g.units, g.unit_size) for g in groups] == [(u, s) for u, s, _ in expected_groups]
    before = count_parameters(model)
    result = prune_structured(model, ratio)
    removed = [round(ratio * units) for units, _, _ in expected_groups]
    assert list(result.removed.values()) == removed
    lost = sum(r * per_unit for r, (_, _, per_unit) in zip(removed, expected_groups, strict=True))
    assert result.params_before == before
    assert count_parameters(model) == result.params_after == before - lost


@pytest.mark.parametrize("name", FAMILIES)
def test_the_pruned_model_computes_the_dense_model_with_those_units_silenced(name):
    """Proves the slicing: remove units, or keep the dense model and zero the removed units'
    out-weights (their inputs to the next layer): the outputs agree."""
    ratio = 0.5
    model = built(name)
    x = FAMILIES[name][1]()
    reference = copy.deepcopy(model)
    with torch.no_grad():
        for group in find_units(reference):
            kept = set(kept_units(group, ratio).tolist())
            for unit in set(range(group.units)) - kept:
                span = torch.arange(unit * group.unit_size, (unit + 1) * group.unit_size)
                for cut in group.consumers:
                    weight = cut.module.weight
                    # transformers' Conv1D holds (in, out); Linear and Conv2d (out, in, ...).
                    if type(cut.module).__name__ == "Conv1D":
                        weight[span] = 0
                    else:
                        weight[:, span] = 0
    dense_out = output(model, x)
    prune_structured(model, ratio)
    assert count_parameters(model) < count_parameters(reference)
    pruned_out = output(model, x)
    silenced_out = output(reference, x)
    assert not torch.allclose(dense_out, silenced_out, atol=1e-4)  # the units did matter
    torch.testing.assert_close(pruned_out, silenced_out, atol=1e-5, rtol=1e-4)


def test_the_largest_units_by_in_and_out_weights_stay_in_order():
    model = nn.Sequential(nn.Linear(2, 5), nn.ReLU(), nn.Linear(5, 1))
    with torch.no_grad():
        # In-weight norms 1..5 (unit i has norm i + 1), out-weights small, except unit 0,
        # whose out-weight is large: its total magnitude ranks it first.
        model[0].weight.copy_(torch.tensor([[1.0, 0], [0, 2], [3, 0], [0, 4], [5, 0]]))
        model[0].bias.copy_(torch.arange(5.0))
        model[2].weight.copy_(torch.tensor([[10.0, 0.1, 0.1, 0.1, 0.1]]))
    prune_structured(model, 0.4)  # removes 2 of 5: units 1 and 2 (norms 2.0 and 3.0)
    assert model[0].weight.tolist() == [[1.0, 0], [0, 4], [5, 0]]
    assert model[0].bias.tolist() == [0.0, 3.0, 4.0]
    assert model[2].weight[0].tolist() == pytest.approx([10.0, 0.1, 0.1])
    assert (model[0].out_features, model[2].in_features) == (3, 3)


class Residual(nn.Module):
    """fc1's output feeds fc2 and a residual sum: its units are not fc2's alone."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 4), nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(x)
        return self.fc2(torch.relu(h)) + h


class Shared(nn.Module):
    """One Linear pair applied twice (shared weights): left whole."""

    def __init__(self) -> None:
        super().__init__()
        self.up, self.down = nn.Linear(4, 8), nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for _ in range(2):
            x = self.down(torch.relu(self.up(x)))
        return x


class Chain(nn.Module):
    """A plain model fx can trace: fc1 -> GELU -> dropout -> fc2 is a pair; fc2 -> fc3 passes
    through a LayerNorm, which mixes units, so it is not."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(4, 6), nn.Linear(6, 5), nn.Linear(5, 2)
        self.norm = nn.LayerNorm(5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = nn.functional.dropout(nn.functional.gelu(self.fc1(x)), 0.0)
        return self.fc3(self.norm(self.fc2(h)))


def test_traced_models_pair_only_layers_whose_units_feed_one_layer_alone():
    assert find_units(Residual()) == [] and find_units(Shared()) == []
    model = Chain()
    (group,) = find_units(model)
    assert (group.producers[0].module, group.consumers[0].module) == (model.fc1, model.fc2)


def test_units_removed_rounds_and_keeps_one():
    assert [units_removed(64, r) for r in (0.0, 0.1, 0.25, 0.5)] == [0, 6, 16, 32]
    assert units_removed(2, 0.9) == 1  # never the last unit
    assert units_removed(1, 0.5) == 0


# -- pruning during training ------------------------------------------------------------------

DIM, HIDDEN, OUT = 5, 8, 3


def batches(n: int) -> list[list[torch.Tensor]]:
    g = torch.Generator().manual_seed(7)
    return [[torch.randn(16, DIM, generator=g), torch.randint(0, OUT, (16,), generator=g)]
            for _ in range(n)]


def loss_fn(model: nn.Module, batch: list[torch.Tensor]) -> torch.Tensor:
    return nn.functional.cross_entropy(model(batch[0]), batch[1])


def small_mlp() -> nn.Module:
    torch.manual_seed(3)
    return nn.Sequential(nn.Linear(DIM, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, OUT))


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_pruning_at_step_n_carries_the_optimizer_state_sliced(optimizer):
    """``configure`` with ``prune_after_steps`` 2 against the same run by hand: two dense
    steps, a smaller model built from the kept rows/columns, its optimizer state (Adam's moments
    or SGD's momentum, and the step count) sliced the same way, the warmup schedule continuing
    at step 2, and a third step on it."""
    recipe = Recipe(prune_ratio=0.5, prune_after_steps=2, optimizer=optimizer, lr=0.05,
                    warmup_steps=4, weight_decay=0.01, momentum=0.9)
    data = batches(3)
    run = configure(recipe, small_mlp(), device="cpu")
    dense_optimizer = run.optimizer
    for batch in data[:2]:
        run.step([batch], loss_fn)
    assert run.model[0].weight.shape == (HIDDEN // 2, DIM)  # pruned after the 2nd step
    assert run.optimizer is not dense_optimizer
    run.step([data[2]], loss_fn)

    # By hand: the dense model, its optimizer and schedule for two steps.
    dense = small_mlp()
    opt = build_optimizer(dense.parameters(), recipe)
    sched = build_scheduler(opt, recipe)
    for batch in data[:2]:
        optimizer_step(dense, loss_fn, [batch], opt, sched, recipe, "cpu")
    (group,) = find_units(dense)
    keep = kept_units(group, recipe.prune_ratio)
    small = nn.Sequential(nn.Linear(DIM, len(keep)), nn.ReLU(), nn.Linear(len(keep), OUT))
    cuts = {"0.weight": (0, keep), "0.bias": (0, keep), "2.weight": (1, keep)}
    dense_params = dict(dense.named_parameters())
    small_opt = build_optimizer(small.parameters(), recipe)
    with torch.no_grad():
        for name, param in small.named_parameters():
            old = dense_params[name]
            dim, index = cuts.get(name, (0, None))
            param.copy_(old if index is None else old.index_select(dim, index))
            state = {k: (v.index_select(dim, index) if index is not None and v.dim() else v)
                     .clone() for k, v in opt.state[old].items()}
            small_opt.state[param] = state
    for g in small_opt.param_groups:
        g["lr"] = recipe.lr * 3 / 4  # warmup: the third step of four runs at 3/4 of lr
    optimizer_step(small, loss_fn, [data[2]], small_opt, None, recipe, "cpu")
    for (name, got), expected in zip(run.model.named_parameters(), small.parameters(),
                                     strict=True):
        torch.testing.assert_close(got, expected, msg=name)
    assert run.scheduler.last_epoch == 3


def test_a_trial_that_prunes_after_some_steps_trains_on_the_smaller_model():
    toy = make_toy_task()
    models: list[nn.Module] = []

    def build() -> nn.Module:  # keeps each model the trial builds, to look at after it
        models.append(toy.build_model())
        return models[-1]

    task = dataclasses.replace(toy, build_model=build)
    recipe = Recipe(prune_ratio=0.5, prune_after_steps=5, lr=1e-2)
    limits = dataclasses.replace(TrialLimits.for_task(task, seed=0), max_steps=40,
                                 eval_every_seconds=1e9)
    result = run_trial(task, recipe, limits)
    assert result.status in (objective.REACHED, objective.NOT_REACHED), result.message
    assert result.steps == 40 and result.inactive_knobs == []
    trained = models[-1]  # the last one built is the one that trained (the first: memory)
    assert trained[0].out_features == 16 and trained[2].in_features == 16


def test_pruning_during_training_is_for_one_process():
    with pytest.raises(ConfigError, match="prune_after_steps: pruning during training runs in "
                                          "a single process only"):
        Recipe(prune_ratio=0.3, prune_after_steps=10, parallelism="ddp", workers=2)
    Recipe(prune_ratio=0.3, parallelism="ddp", workers=2)  # step-0 pruning: every mode


# -- setup: inactive knob, configure, memory ---------------------------------------------------


def test_a_model_without_units_records_the_knob_as_inactive():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3))
    before = count_parameters(model)
    run = configure(Recipe(prune_ratio=0.5), model, device="cpu")
    assert count_parameters(run.model) == before
    assert any(line.startswith("prune_ratio: no effect: no prunable units (Sequential")
               for line in run.inactive), run.inactive
    assert configure(Recipe(prune_ratio=0.5), mlp(), device="cpu").inactive == ()


def test_configure_prunes_at_step_zero_before_building_the_optimizer():
    run = configure(Recipe(prune_ratio=0.25), mlp(), device="cpu")
    assert run.model[0].out_features == 15 and run.model[3].in_features == 15
    assert {id(p) for p in run.model.parameters()} == \
        {id(p) for g in run.optimizer.param_groups for p in g["params"]}


def mlp_task() -> Task:
    x = torch.randn(64, 32)
    y = torch.randint(0, 4, (64,))

    def build() -> nn.Module:
        return nn.Sequential(nn.Linear(32, 256), nn.ReLU(), nn.Linear(256, 4))

    return Task(name="mlp", build_model=build, train=(x, y), validation=(x, y),
                loss=lambda m, b: nn.functional.cross_entropy(m(b[0]), b[1]),
                predict=lambda m, b: m(b[0]).argmax(-1), target=1.0)


def test_predicted_memory_falls_with_the_ratio_and_not_when_pruning_later():
    # Evaluation in batches of 4: the training step is the peak this test compares.
    task = dataclasses.replace(mlp_task(), eval_batch_size=4)
    cache = TraceCache()
    peaks = [predict_peak(task, Recipe(prune_ratio=r, batch_size=32), cache=cache)
             for r in (0.0, 0.25, 0.5)]
    assert peaks[0].peak_bytes > peaks[1].peak_bytes > peaks[2].peak_bytes
    # Parameters and gradients fall by exactly the removed units' weights (optimizer state
    # falls too, with the step's temporaries beside it).
    per_unit = 32 + 1 + 4
    for peak, removed in zip(peaks[1:], (64, 128), strict=True):
        assert peaks[0].parameters_bytes - peak.parameters_bytes == removed * per_unit * 4
        assert peaks[0].gradients_bytes - peak.gradients_bytes == removed * per_unit * 4
        assert peaks[0].optimizer_bytes > peak.optimizer_bytes
    later = predict_peak(task, Recipe(prune_ratio=0.5, prune_after_steps=10, batch_size=32),
                         cache=cache)
    assert later.peak_bytes == peaks[0].peak_bytes  # the dense steps come first: they peak
