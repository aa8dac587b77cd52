"""Structured pruning (``prune_ratio``): remove whole units by magnitude, leaving smaller dense
layers that do less work in every later step.

A *unit* is something a pair of layers shares: a feed-forward hidden unit (a row of
``Linear(d->h)`` and the matching column of ``Linear(h->d)``), an attention head (its block of
the query/key/value projections and of the output projection's inputs), or a convolution's
output channel (and the next convolution's matching input channel). Removing a unit removes
its in-weights and out-weights together, so the function the other units compute is unchanged:
the pruned model equals the dense model with those units' out-weights zeroed.

``find_units`` finds the groups of units of a model:

- Hugging Face BERT layers (``intermediate.dense`` -> ``output.dense``; self-attention heads,
  shrunk by slicing ``query``/``key``/``value`` and ``output.dense``: transformers 5 has no
  ``prune_heads`` any more, and its BERT attention reshapes by head size, so fewer heads run);
- Hugging Face GPT-2 blocks (MLP ``c_fc`` -> ``c_proj``, transformers ``Conv1D`` whose weights
  are transposed; attention heads of ``c_attn``/``c_proj``, through ``split_size``);
- ``nn.TransformerEncoderLayer``/``nn.TransformerDecoderLayer`` (``linear1`` -> ``linear2``);
  ``nn.MultiheadAttention`` keeps its heads (its projections are fused at the model width);
- ``nn.Sequential(Linear, activation, [Dropout], Linear)`` runs;
- any other model that ``torch.fx`` can trace: a ``Linear`` or ``Conv2d`` whose output flows,
  through element-wise activations and dropout only (and pooling, between convolutions), into
  one ``Linear`` or ``Conv2d`` alone (the built-in ``mnist`` CNN: conv1 -> conv2 channels,
  fc1 -> fc2 hidden units). A layer whose output also feeds anything else (a residual, a
  flatten, a norm) is left whole. Tracing is tried only when the named structures found none.

``prune_structured`` scores every unit by the L2 norm of its in- and out-weights together,
removes ``units_removed(units, ratio)`` (``round(ratio x units)``, keeping at least one) of the
smallest of each group, and puts smaller parameters in place on the same module objects (their
size attributes updated), so hooks, activation checkpointing and compiled forwards stay
attached. It works on fake tensors too (the memory trace): only shapes decide what is built.

``prune_during_training`` is the same cut after some optimizer steps: the optimizer's state
(Adam's moments, SGD's momentum) is sliced with its parameters and the schedule's step count
carried over, so training goes on where it was.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx
from torch import nn

from autotune.knobs.optim import build_optimizer, build_scheduler
from autotune.recipe import Recipe

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_ELEMENTWISE_MODULES = (nn.ReLU, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.LeakyReLU, nn.ELU,
                        nn.Mish, nn.Dropout, nn.Identity)
_POOL_MODULES = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d,
                 nn.AvgPool3d)
_ELEMENTWISE_FUNCTIONS = {torch.relu, torch.tanh, torch.sigmoid, nn.functional.relu,
                          nn.functional.gelu, nn.functional.silu, nn.functional.dropout,
                          nn.functional.leaky_relu, nn.functional.elu, nn.functional.mish,
                          torch.nn.functional.tanh, torch.nn.functional.sigmoid}
_POOL_FUNCTIONS = {nn.functional.max_pool1d, nn.functional.max_pool2d, nn.functional.max_pool3d,
                   nn.functional.avg_pool1d, nn.functional.avg_pool2d, nn.functional.avg_pool3d,
                   torch.max_pool1d, torch.max_pool2d, torch.avg_pool1d}
_ELEMENTWISE_METHODS = {"relu", "tanh", "sigmoid"}


@dataclass(frozen=True)
class Cut:
    """One layer's side of a unit group: the output side of a producer (rows of a Linear,
    columns of a transformers Conv1D, output channels of a convolution) or the input side of
    a consumer. ``offsets``: where each block of units starts along that dimension (three for
    a fused query/key/value projection)."""

    module: nn.Module
    side: str
    """``out`` (the unit's in-weights live here) or ``in`` (its out-weights)."""
    offsets: tuple[int, ...] = (0,)


@dataclass(frozen=True)
class UnitGroup:
    """Units shared by producer and consumer layers, all cut together."""

    name: str
    """Where the group is, e.g. ``bert.encoder.layer.0.intermediate`` (for messages)."""
    producers: tuple[Cut, ...]
    consumers: tuple[Cut, ...]
    units: int
    unit_size: int = 1
    """Positions per unit along the cut dimension (an attention head's width; 1 otherwise)."""
    on_shrink: Callable[[int], None] | None = field(default=None, compare=False)
    """Told the number of units kept, to update the model's own counts (attention heads)."""


@dataclass(frozen=True)
class PruneResult:
    """What ``prune_structured`` removed."""

    removed: dict[str, int]
    """Group name -> units removed."""
    params_before: int
    params_after: int
    slices: dict[nn.Parameter, tuple[nn.Parameter, tuple[tuple[int, torch.Tensor], ...]]]
    """Old parameter -> (the parameter now in its place, the ``(dim, kept indices)`` cuts that
    made it from the old one, in order); only parameters that changed."""

    @property
    def units_removed(self) -> int:
        return sum(self.removed.values())


def units_removed(units: int, ratio: float) -> int:
    """Units a group of ``units`` loses at ``ratio``: ``round(ratio x units)``, at most all but
    one (a layer with no unit left would cut the model in two)."""
    if ratio <= 0 or units <= 1:
        return 0
    return min(int(round(ratio * units)), units - 1)


# -- finding units ----------------------------------------------------------------------------


def find_units(model: nn.Module) -> list[UnitGroup]:
    """Every group of prunable units of ``model`` (see the module docstring); empty when it has
    none. Looks at structure only, never at values."""
    groups: list[UnitGroup] = []
    for name, module in model.named_modules():
        groups += _named_structures(name or type(model).__name__, module)
    if not groups:
        groups = _traced_chains(model)
    return _each_side_once(groups)


def _each_side_once(groups: list[UnitGroup]) -> list[UnitGroup]:
    """The groups without any that would cut a layer's side a second time (a layer found by
    two rules, say): a side's units are one set, cut once."""
    claimed: set[tuple[int, str]] = set()
    out = []
    for group in groups:
        sides = {(id(c.module), c.side) for c in (*group.producers, *group.consumers)}
        if sides & claimed:
            continue
        claimed |= sides
        out.append(group)
    return out


def no_units_reason(model: nn.Module) -> str:
    """The inactive-knob line for a model without prunable units."""
    return (f"prune_ratio: no effect: no prunable units ({type(model).__name__} has no "
            "feed-forward pair Linear -> activation -> Linear, attention heads that can shrink, "
            "or convolution feeding a convolution)")


def _named_structures(name: str, m: nn.Module) -> list[UnitGroup]:
    out: list[UnitGroup] = []
    if _has(m, "intermediate", "dense") and _has(m, "output", "dense") \
            and isinstance(m.intermediate.dense, nn.Linear) \
            and isinstance(m.output.dense, nn.Linear):  # BERT layer
        out.append(_pair(f"{name}.intermediate", m.intermediate.dense, m.output.dense))
    attn = getattr(m, "self", None)
    if attn is not None and all(hasattr(attn, a) for a in (
            "query", "key", "value", "attention_head_size", "num_attention_heads")) \
            and _has(m, "output", "dense") and isinstance(attn.query, nn.Linear):
        out.append(_bert_heads(name, attn, m.output.dense))
    if _is_conv1d(getattr(m, "c_fc", None)) and _is_conv1d(getattr(m, "c_proj", None)):
        out.append(_pair(f"{name}.c_fc", m.c_fc, m.c_proj))  # GPT-2 MLP
    if _is_conv1d(getattr(m, "c_attn", None)) and _is_conv1d(getattr(m, "c_proj", None)) \
            and hasattr(m, "split_size") and hasattr(m, "head_dim") \
            and not getattr(m, "is_cross_attention", False):
        out.append(_gpt2_heads(name, m))
    if isinstance(m, (nn.TransformerEncoderLayer, nn.TransformerDecoderLayer)):
        out.append(_pair(f"{name}.linear1", m.linear1, m.linear2))
    if isinstance(m, nn.Sequential):
        out += _sequential_pairs(name, m)
    return out


def _has(m: nn.Module, child: str, grandchild: str) -> bool:
    return hasattr(getattr(m, child, None), grandchild)


def _is_conv1d(m: Any) -> bool:
    """A transformers ``Conv1D`` (a Linear with a transposed ``(in, out)`` weight), recognised
    by its shape attributes, so transformers is never imported here."""
    return type(m).__name__ == "Conv1D" and hasattr(m, "nf") and hasattr(m, "nx")


def _out_size(m: nn.Module) -> int:
    if isinstance(m, nn.Linear):
        return m.out_features
    if isinstance(m, _CONV):
        return m.out_channels
    return int(m.nf)


def _pair(name: str, producer: nn.Module, consumer: nn.Module) -> UnitGroup:
    return UnitGroup(name, (Cut(producer, "out"),), (Cut(consumer, "in"),),
                     units=_out_size(producer))


def _bert_heads(name: str, attn: nn.Module, dense: nn.Linear) -> UnitGroup:
    size = int(attn.attention_head_size)

    def shrink(kept: int) -> None:
        attn.num_attention_heads = kept
        attn.all_head_size = kept * size

    return UnitGroup(f"{name}.heads",
                     tuple(Cut(p, "out") for p in (attn.query, attn.key, attn.value)),
                     (Cut(dense, "in"),), units=int(attn.num_attention_heads), unit_size=size,
                     on_shrink=shrink)


def _gpt2_heads(name: str, m: nn.Module) -> UnitGroup:
    size, width = int(m.head_dim), int(m.split_size)

    def shrink(kept: int) -> None:
        m.split_size = kept * size
        m.num_heads = kept
        m.embed_dim = kept * size

    return UnitGroup(f"{name}.heads", (Cut(m.c_attn, "out", (0, width, 2 * width)),),
                     (Cut(m.c_proj, "in"),), units=width // size, unit_size=size,
                     on_shrink=shrink)


def _sequential_pairs(name: str, seq: nn.Sequential) -> list[UnitGroup]:
    layers = list(seq)
    out = []
    for i, layer in enumerate(layers):
        if not isinstance(layer, nn.Linear):
            continue
        j = i + 1
        while j < len(layers) and isinstance(layers[j], _ELEMENTWISE_MODULES):
            j += 1
        if j > i + 1 and j < len(layers) and isinstance(layers[j], nn.Linear):
            out.append(_pair(f"{name}.{i}", layer, layers[j]))
    return out


def _traced_chains(model: nn.Module) -> list[UnitGroup]:
    """Producer -> consumer chains in ``model``'s ``torch.fx`` graph (see the module docstring);
    empty when fx cannot trace the model (data-dependent control flow, say)."""
    try:
        graph = torch.fx.symbolic_trace(model).graph
    except Exception:  # noqa: BLE001 - an untraceable model simply has no traced units
        return []
    modules = dict(model.named_modules())
    calls = Counter(str(n.target) for n in graph.nodes if n.op == "call_module")
    # A layer called more than once (weights shared between two places) is left whole.
    modules = {name: m for name, m in modules.items() if calls[name] <= 1}
    out = []
    for node in graph.nodes:
        producer = _layer(node, modules)
        if producer is None:
            continue
        conv = isinstance(producer, _CONV)
        current = node
        while len(current.users) == 1:
            (user,) = current.users
            if not user.args or user.args[0] is not current:
                break
            consumer = _layer(user, modules)
            if consumer is not None:
                if isinstance(consumer, type(producer)) and _groups(consumer) == 1:
                    out.append(_pair(str(node.target), producer, consumer))
                break
            if not _passes_units(user, modules, conv):
                break
            current = user
    return out


def _layer(node: Any, modules: dict[str, nn.Module]) -> nn.Module | None:
    if node.op != "call_module":
        return None
    m = modules.get(str(node.target))
    if isinstance(m, nn.Linear) or (isinstance(m, _CONV) and _groups(m) == 1):
        return m
    return None


def _groups(m: nn.Module) -> int:
    return int(getattr(m, "groups", 1))


def _passes_units(node: Any, modules: dict[str, nn.Module], conv: bool) -> bool:
    """Whether ``node`` keeps each unit apart (element-wise; pooling keeps channels apart)."""
    if node.op == "call_module":
        m = modules.get(str(node.target))
        return isinstance(m, _ELEMENTWISE_MODULES) or (conv and isinstance(m, _POOL_MODULES))
    if node.op == "call_function":
        return node.target in _ELEMENTWISE_FUNCTIONS or (conv and node.target in _POOL_FUNCTIONS)
    return node.op == "call_method" and node.target in _ELEMENTWISE_METHODS


# -- cutting ----------------------------------------------------------------------------------


def _weight_dim(module: nn.Module, side: str) -> int:
    """The weight's dimension that a unit indexes on this side."""
    transposed = _is_conv1d(module)  # Conv1D's weight is (in, out)
    return (1 if transposed else 0) if side == "out" else (0 if transposed else 1)


def _positions(cut: Cut, kept_units: torch.Tensor, unit_size: int) -> torch.Tensor:
    """The weight positions of the kept units on this cut (every block of ``offsets``)."""
    within = torch.arange(unit_size, device=kept_units.device)
    base = (kept_units[:, None] * unit_size + within[None, :]).reshape(-1)
    return torch.cat([base + offset for offset in cut.offsets])


def _scores(group: UnitGroup) -> torch.Tensor:
    """Each unit's magnitude: the L2 norm of all its in- and out-weights."""
    total = None
    for cut in (*group.producers, *group.consumers):
        weight = cut.module.weight.detach().float()
        dim = _weight_dim(cut.module, cut.side)
        squares = weight.pow(2).movedim(dim, 0).reshape(weight.shape[dim], -1).sum(1)
        per_unit = torch.zeros(group.units, dtype=squares.dtype, device=squares.device)
        for offset in cut.offsets:
            block = squares[offset:offset + group.units * group.unit_size]
            per_unit = per_unit + block.reshape(group.units, group.unit_size).sum(1)
        total = per_unit if total is None else total + per_unit
    assert total is not None
    return total.sqrt()


def kept_units(group: UnitGroup, ratio: float) -> torch.Tensor:
    """Indices (ascending) of the units ``prune_structured`` keeps: the largest-magnitude
    ones."""
    keep = group.units - units_removed(group.units, ratio)
    return torch.sort(torch.topk(_scores(group), keep).indices).values


def _cut(module: nn.Module, side: str, index: torch.Tensor) -> list[tuple[str, int]]:
    """Replace ``module``'s weight (and, on the output side, bias) by the kept slice; update
    its size attribute. Returns ``(parameter name, dim)`` of each parameter cut."""
    dim = _weight_dim(module, side)
    cuts = [("weight", dim)]
    if side == "out" and getattr(module, "bias", None) is not None:
        cuts.append(("bias", 0))
    for name, d in cuts:
        old = getattr(module, name)
        new = old.detach().index_select(d, index.to(old.device))
        if old.dim() >= 4 and old.is_contiguous(memory_format=torch.channels_last):
            new = new.contiguous(memory_format=torch.channels_last)
        setattr(module, name, nn.Parameter(new, requires_grad=old.requires_grad))
    size = int(index.numel())
    if isinstance(module, nn.Linear):
        setattr(module, "out_features" if side == "out" else "in_features", size)
    elif isinstance(module, _CONV):
        setattr(module, "out_channels" if side == "out" else "in_channels", size)
    elif side == "out":
        module.nf = size
    else:
        module.nx = size
    return cuts


def prune_structured(model: nn.Module, ratio: float,
                     groups: list[UnitGroup] | None = None) -> PruneResult:
    """Remove ``units_removed(units, ratio)`` smallest-magnitude units of each group of
    ``model`` (``groups``, default ``find_units(model)``), in place. Every group's keep-list
    is chosen from the weights as they are before any cut."""
    groups = find_units(model) if groups is None else groups
    before = count_parameters(model)
    plans = [(g, kept_units(g, ratio)) for g in groups if units_removed(g.units, ratio) > 0]
    origin: dict[int, tuple[nn.Parameter, list[tuple[int, torch.Tensor]]]] = {}
    removed: dict[str, int] = {}
    for group, kept in plans:
        for cut in (*group.producers, *group.consumers):
            index = _positions(cut, kept, group.unit_size)
            olds = {n: getattr(cut.module, n) for n in ("weight", "bias")}
            for pname, dim in _cut(cut.module, cut.side, index):
                old, new = olds[pname], getattr(cut.module, pname)
                first, steps = origin.pop(id(old), (old, []))
                origin[id(new)] = (first, [*steps, (dim, index)])
        if group.on_shrink is not None:
            group.on_shrink(int(kept.numel()))
        removed[group.name] = group.units - int(kept.numel())
    current = {id(p): p for p in model.parameters()}
    slices = {first: (current[key], tuple(steps)) for key, (first, steps) in origin.items()
              if key in current}
    return PruneResult(removed=removed, params_before=before,
                       params_after=count_parameters(model), slices=slices)


def count_parameters(model: nn.Module) -> int:
    """Parameters of ``model`` (shared ones once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def slice_like(tensor: torch.Tensor, steps: Iterable[tuple[int, torch.Tensor]]) -> torch.Tensor:
    """``tensor`` cut as its parameter was (``PruneResult.slices``)."""
    for dim, index in steps:
        tensor = tensor.index_select(dim, index.to(tensor.device))
    return tensor


# -- pruning during training ------------------------------------------------------------------


def prune_during_training(
    model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, recipe: Recipe,
    groups: list[UnitGroup], masks: dict[nn.Parameter, torch.Tensor] | None = None,
) -> tuple[PruneResult, torch.optim.Optimizer, Any, dict[nn.Parameter, torch.Tensor]]:
    """The structured prune after ``recipe.prune_after_steps`` optimizer steps: cut ``model``
    in place, and return a new optimizer (``build_optimizer``) whose state is the old one's,
    sliced as the parameters were (Adam's ``exp_avg``/``exp_avg_sq``, SGD's
    ``momentum_buffer``; the step count kept), a new scheduler that goes on from the old one's
    step count, and the ``weight_sparsity`` masks sliced likewise. The same parameter groups'
    hyperparameters (the learning rate of this step) carry over."""
    result = prune_structured(model, recipe.prune_ratio, groups)
    new_optimizer = build_optimizer(model.parameters(), recipe)
    new_scheduler = build_scheduler(new_optimizer, recipe) if scheduler is not None else None
    if new_scheduler is not None:
        new_scheduler.load_state_dict(scheduler.state_dict())
    for old_group, new_group in zip(optimizer.param_groups, new_optimizer.param_groups,
                                    strict=True):
        new_group.update({k: v for k, v in old_group.items() if k != "params"})
    for old, state in optimizer.state.items():
        new, steps = result.slices.get(old, (old, ()))
        new_optimizer.state[new] = {
            k: slice_like(v, steps) if torch.is_tensor(v) and v.shape == old.shape else v
            for k, v in state.items()}
    new_masks = {result.slices.get(p, (p, ()))[0]: slice_like(m, result.slices.get(p, (p, ()))[1])
                 for p, m in (masks or {}).items()}
    return result, new_optimizer, new_scheduler, new_masks


def apply_structured_pruning(model: nn.Module,
                             recipe: Recipe) -> tuple[list[UnitGroup], str | None]:
    """The ``prune_ratio`` knob at setup, on the plain model (before any wrapper): with
    ``prune_after_steps`` 0, prune now and return no groups; with ``prune_after_steps`` > 0,
    return the groups that ``prune_during_training`` will cut then (found now, on the model
    before compiling or checkpointing wraps it). The second value is the inactive-knob line
    when the knob cannot act (no prunable units, or a ratio too small to remove one unit)."""
    if recipe.prune_ratio <= 0:
        return [], None
    groups = find_units(model)
    if not groups:
        return [], no_units_reason(model)
    if not any(units_removed(g.units, recipe.prune_ratio) for g in groups):
        return [], (f"prune_ratio: no effect: {recipe.prune_ratio:g} of the largest unit group "
                    f"({max(g.units for g in groups)} units) rounds to no unit")
    if recipe.prune_after_steps > 0:
        return groups, None
    prune_structured(model, recipe.prune_ratio, groups)
    return [], None
