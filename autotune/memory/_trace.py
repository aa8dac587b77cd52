"""Tensor memory of one device's training step and evaluation, traced without allocating it.

``trace_step(task, recipe)`` builds the task's model and runs an optimizer step of the
recipe's micro-batch on one device under ``FakeTensorMode`` (device ``cpu``: tensors have
shapes, dtypes and storages but no data), with ``TensorTracker`` (torch's ``MemTracker``)
watching every tensor. It is the second step that is traced, because the optimizer's state
exists only from the first step on (the first one is taken on zero gradients, without a
forward pass); gradient accumulation traces two micro-batches, because the second one runs
while the first one's gradients are held. The step is the trial's own function,
``autotune.knobs.optimizer_step`` (with ``read_values=False``: fake tensors have no values),
after the same model factory, structured pruning, checkpointing, ``weight_sparsity`` masks,
loss scaler and optimizer. Structured pruning (``prune_ratio``) at step 0 is traced: the
smaller model is the one that trains. With ``prune_after_steps`` > 0 the dense model trains
first, and its steps are the peak, so the dense model is traced. A
recipe that distils traces the task's teacher too (``autotune.knobs.load_teacher``, with fake
copies of its weights): its weights count with the parameters, its forward pass (without
gradients) with the activations.

The batch is ``largest_batch``: the micro-batch of the training examples with the most
non-zero inputs, the worst case for tasks that cut padding per batch (``bert`` keeps its full
padded length under fake tensors); for a ``Dataset``, the task's collate function applied to
its largest samples (padding collates pad to the longest sample of a batch). A model or loss
that reads tensor values (``.item()``, data-dependent shapes) cannot run on fake tensors; then
the step runs on real tensors on the CPU, tracked the same way (``method`` says which).

After the step, the trace evaluates (phase ``evaluation``): a trial evaluates between its
steps with the model states resident (weights, masks, the optimizer's state; gradients are
freed, ``zero_grad(set_to_none=True)``), on batches of ``evaluation_batch_size(task)``
examples (the task's ``eval_batch_size``, or a quarter of it where accuracy is read in pieces:
``autotune.train.evaluation``), which can be larger than the training micro-batch. With
checkpointing, or a small training batch, this evaluation can be a trial's peak (BERT-base,
checkpointed, batch 32: 0.30 GiB over the training step on the CPU tracker; on an H200 the
whole trial, evaluating in batches of 256, measured 2.13 GiB where the steps alone were
predicted at 1.80 GiB). The trace
runs what ``autotune.tasks.evaluate_metric`` runs for each batch, in eval mode without
gradients, on its largest batch (``largest_validation``: the validation examples with the most
non-zero inputs), under autocast only where a trial's evaluation has it (DeepSpeed's 16-bit
weights, ``weights_dtype``). A metric function that reads a value (``float(loss)``) after the
model's forward pass ends the fake evaluation there, its peak already seen; one that reads a
value before the forward pass sends the whole trace to real tensors.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch._subclasses.fake_tensor import DataDependentOutputException, FakeTensorMode
from torch.utils.data import Dataset

from autotune.knobs import (
    apply_checkpointing,
    apply_structured_pruning,
    autocast_context,
    build_optimizer,
    freeze_teacher,
    load_teacher,
    make_grad_scaler,
    optimizer_step,
    prune_by_magnitude,
    step_loss,
)
from autotune.memory._measured import CATEGORIES, TensorTracker
from autotune.recipe import Recipe
from autotune.tasks import (
    Batch,
    Task,
    TaskData,
    evaluation_batch_size,
    map_tensors,
    validation_batches,
)

FAKE = "fake_trace"
"""``StepTrace.method``: traced on fake tensors (nothing allocated)."""
REAL = "cpu_trace"
"""``StepTrace.method``: the model or loss needs real values, so the step ran on the CPU."""

PHASES = ("forward_backward", "optimizer_step", "evaluation")
"""The trace's phases, in order: a training step's forward and backward passes, its update,
and an evaluation after it (see the module docstring)."""


@dataclass(frozen=True)
class StepTrace:
    """What a single-device training step holds, from a trace (see the module docstring)."""

    phases: dict[str, dict[str, int]]
    """Phase (``forward_backward``, ``optimizer_step``, ``evaluation``) -> breakdown at its
    peak, in bytes:
    ``parameters`` (with buffers and pruning masks), ``gradients``, ``optimizer``,
    ``activations`` (with temporaries) and ``total``."""
    param_count: int
    """Trainable parameters (shared ones counted once)."""
    param_bytes: int
    """Parameters and buffers as the model holds them (fp32 weights under autocast)."""
    mask_bytes: int
    """Pruning masks (one byte per pruned weight entry), held as long as the model."""
    gradient_bytes: int
    """All gradients, as they are at the end of a backward pass."""
    optimizer_bytes: int
    """The optimizer's state after a step (Adam: two fp32 moments; SGD: one momentum)."""
    largest_layer_params: int
    """Parameters of the largest leaf module (what DeepSpeed's ZeRO-3 estimator assumes is
    gathered at once)."""
    block_params: int
    """Parameters of the largest block of the model's ``ModuleList``s (what FSDP gathers at
    once besides the root group); 0 when it has none."""
    blocks_total_params: int
    """Parameters of every block of the model's ``ModuleList``s (what FSDP shards block by
    block; the rest is the root group, gathered for the whole forward and backward pass)."""
    method: str
    """``fake_trace`` or ``cpu_trace``."""
    teacher_bytes: int = 0
    """A distillation teacher's parameters and buffers (counted in the phases' ``parameters``;
    never sharded by a parallel mode)."""
    seconds: float = 0.0
    """Wall time the trace took."""
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def peak_bytes(self) -> int:
        return max(p["total"] for p in self.phases.values())


def largest_batch(task: Task, batch_size: int) -> Batch:
    """The ``batch_size`` training examples with the most non-zero input entries (labels, the
    last tensor, excluded): for padded sequences the longest ones, the batch whose step uses
    the most memory; for fixed-shape inputs any batch is as large, and this is one of them.
    For a ``Dataset``: its largest samples (``_dataset_sizes``) collated into one batch."""
    idx = _largest(task.train, batch_size)
    if isinstance(task.train, tuple | list):
        return [t.index_select(0, idx) for t in task.train]
    return task.collate_fn([task.train[int(i)] for i in idx])


def largest_validation(task: Task) -> Task:
    """``task`` with its validation data cut to its largest evaluation batch: the examples of the
    batch a trial's evaluation reads (``autotune.tasks.evaluation_batch_size``) with the
    most non-zero inputs, chosen as ``largest_batch`` chooses training examples, and
    ``eval_batch_size`` set to it. An evaluation's peak is that of its largest batch
    (batches run one at a time), so evaluating this task
    (``autotune.tasks.evaluate_metric``) peaks as a trial's evaluation of ``task`` does, in
    one batch instead of all of them."""
    batch_size = evaluation_batch_size(task)
    idx = _largest(task.validation, batch_size)
    if isinstance(task.validation, tuple | list):
        rows: TaskData = tuple(t.index_select(0, idx) for t in task.validation)
    else:
        rows = _Samples([task.validation[int(i)] for i in idx])
    return dataclasses.replace(task, validation=rows, eval_batch_size=batch_size)


class _Samples(Dataset):
    """Samples read once (``largest_validation``). Evaluating them reads the user's Dataset no
    more: a sample that is a view of the Dataset's storage (``x[i]``), made inside a tracker,
    would count the whole storage, which on a GPU stays in host memory."""

    def __init__(self, samples: list[Any]) -> None:
        self.samples = samples

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> Any:
        return self.samples[i]


def _largest(data: TaskData, count: int) -> torch.Tensor:
    """Indices of the ``count`` examples of ``data`` with the most non-zero input entries
    (tensors: labels, the last tensor, excluded; a ``Dataset``: ``_dataset_sizes``), the
    largest first."""
    if not isinstance(data, tuple | list):
        score = _dataset_sizes(data)
    else:
        inputs = data[:-1] or data
        score = torch.zeros(int(data[0].shape[0]), dtype=torch.float64)
        for tensor in inputs:
            score += tensor.reshape(tensor.shape[0], -1).ne(0).sum(dim=1).double()
    # Stable order among ties, so the batch (and its trace) does not depend on topk's choice.
    return torch.argsort(-score, stable=True)[: min(count, len(score))]


SCAN_SAMPLES = 2048
"""At most this many samples of a Dataset are read to find its largest ones (evenly spaced
over it, once per process): a larger Dataset's largest sample may lie between them, and a
Dataset that decodes each sample pays for this many reads before the first trial."""
_SIZES: dict[int, tuple[Any, torch.Tensor]] = {}


def _dataset_sizes(dataset: Any) -> torch.Tensor:
    """The size of each scanned sample of ``dataset``: the number of elements of its tensors
    (the last element of a tuple sample, its label, excluded), in a tensor whose position i
    is the sample ``dataset[i]`` (0 for samples not scanned). Cached per Dataset object."""
    cached = _SIZES.get(id(dataset))
    if cached is not None and cached[0] is dataset:
        return cached[1]
    n = len(dataset)
    sizes = torch.zeros(n, dtype=torch.float64)
    positions = range(n) if n <= SCAN_SAMPLES else \
        torch.linspace(0, n - 1, SCAN_SAMPLES).round().long().unique().tolist()
    for i in positions:
        sample = dataset[int(i)]
        if isinstance(sample, (tuple, list)) and len(sample) > 1:
            sample = sample[:-1]
        sizes[int(i)] = float(_numel(sample))
    _SIZES[id(dataset)] = (dataset, sizes)
    return sizes


def _numel(sample: Any) -> int:
    """Elements of every tensor in a sample (characters of a string, for samples that a
    collate function tokenizes), through lists, tuples and mappings."""
    if isinstance(sample, torch.Tensor):
        return sample.numel()
    if isinstance(sample, str):
        return len(sample)
    if isinstance(sample, Mapping):
        return sum(_numel(v) for v in sample.values())
    if isinstance(sample, (list, tuple)):
        return sum(_numel(v) for v in sample)
    return 0


def trace_step(task: Task, recipe: Recipe, weights_dtype: torch.dtype | None = None) -> StepTrace:
    """Trace an optimizer step of ``recipe``'s micro-batch on one device (see the module
    docstring); the parallel mode of ``recipe`` is ignored (``autotune.memory`` adds it).

    ``weights_dtype`` casts the model's weights before the step, as DeepSpeed does for its
    bf16/fp16 modes (autocast alone keeps fp32 weights, whose activations differ)."""
    start = time.perf_counter()
    try:
        with warnings.catch_warnings():
            # torch's own modules (e.g. nn.TransformerEncoder's fast-path checks) read data
            # pointers, which fake tensors warn about; harmless for a trace, noise for a user.
            warnings.filterwarnings("ignore", message="Accessing the data pointer of FakeTensor")
            trace = _trace(task, recipe, fake=True, weights_dtype=weights_dtype)
    except Exception as exc:  # noqa: BLE001 - any model that needs real values: trace for real
        trace = _trace(task, recipe, fake=False, weights_dtype=weights_dtype)
        note = f"fake tensors failed ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})"
        trace = _with(trace, notes=(*trace.notes, note))
    return _with(trace, seconds=time.perf_counter() - start)


def _with(trace: StepTrace, **changes: Any) -> StepTrace:
    return dataclasses.replace(trace, **changes)


def _trace(task: Task, recipe: Recipe, fake: bool, weights_dtype: torch.dtype | None) -> StepTrace:
    mode = FakeTensorMode() if fake else None
    fake_ctx = mode if mode is not None else contextlib.nullcontext()
    rng = torch.get_rng_state()
    teacher = load_teacher(task, recipe)
    if teacher is not None and mode is not None:
        teacher = _fake_copy(teacher, mode)
    try:
        with fake_ctx:
            model = task.build_model()
            model.train()
            if weights_dtype is not None:
                _cast_weights(model, weights_dtype)
            if recipe.prune_after_steps == 0:  # the smaller model; later, the dense one peaks
                apply_structured_pruning(model, recipe)
            if recipe.checkpointing:
                apply_checkpointing(model)
        batch = largest_batch(task, recipe.batch_size)
        if mode is not None:
            batch = map_tensors(mode.from_tensor, batch)
        micro = [batch] * (2 if recipe.accumulation_steps > 1 else 1)
        eval_task = largest_validation(task)
        eval_batch = next(validation_batches(eval_task, torch.device("cpu")))
        if mode is not None:
            eval_batch = map_tensors(mode.from_tensor, eval_batch)
        with fake_ctx:
            tracker = TensorTracker(model, *([teacher] if teacher is not None else []))
            with tracker:
                tracker.phase("setup")
                masks = prune_by_magnitude(model, recipe.weight_sparsity)
                optimizer = build_optimizer(model.parameters(), recipe)
                scaler = make_grad_scaler(recipe.precision, "cpu")
                _create_optimizer_state(model, optimizer)
                optimizer_step(model, step_loss(task, teacher, recipe), micro, optimizer, None,
                               recipe, "cpu",
                               scaler=scaler, masks=masks, read_values=False,
                               phase=tracker.phase)
                tracker.phase("evaluation")
                _evaluate(eval_task, model, eval_batch,
                          recipe.precision if weights_dtype is not None else None)
            stats = _model_stats(model, optimizer, masks)
            stats["teacher_bytes"] = _module_bytes(teacher) if teacher is not None else 0
    finally:
        torch.set_rng_state(rng)
    phases = {name: _masks_as_parameters(tracker.phase_peaks[name], stats["mask_bytes"])
              for name in PHASES}
    return StepTrace(phases=phases, method=FAKE if fake else REAL, **stats)


def _evaluate(task: Task, model: nn.Module, batch: Batch, autocast: str | None) -> None:
    """What ``autotune.tasks.evaluate_metric`` runs for one validation batch: eval mode, no
    gradients, ``task.predict`` against the labels (accuracy) or ``task.evaluate`` on the
    one batch; under the ``autocast`` precision's autocast when given (a trial's evaluation
    has it for DeepSpeed's 16-bit weights only). On fake tensors a value read (``float``,
    ``.item()``) raises: after the model's forward pass (a metric summing losses) the
    evaluation's peak has been seen and the rest is skipped; before it, the error goes up and
    the trace runs on real tensors."""
    # The batch as a trial's evaluation holds it: a copy on the device (tracked here).
    batch = map_tensors(torch.clone, batch)
    forwards: list[bool] = []
    handle = model.register_forward_hook(lambda *_: forwards.append(True))
    ctx = autocast_context(autocast, "cpu") if autocast else contextlib.nullcontext()
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), ctx:
            if task.evaluate is not None:
                task.evaluate(model, iter([batch]))
            elif task.predict is not None:  # a Task has one or the other
                (task.predict(model, batch) == batch[-1]).sum()
    except DataDependentOutputException:
        if not forwards:
            raise
    finally:
        handle.remove()
        model.train(was_training)


def _fake_copy(module: nn.Module, mode: FakeTensorMode) -> nn.Module:
    """A frozen copy of ``module`` whose parameters and buffers are fake tensors of the same
    shapes and dtypes (nothing allocated), for tracing a real model such as a trained
    teacher: the trace must not mix real and fake tensors. Shared tensors stay shared."""
    clone = copy.deepcopy(module)
    fakes: dict[int, torch.Tensor] = {}

    def fake(t: torch.Tensor) -> torch.Tensor:
        if id(t) not in fakes:
            fakes[id(t)] = mode.from_tensor(t.detach())
            if isinstance(t, nn.Parameter):
                fakes[id(t)] = nn.Parameter(fakes[id(t)], requires_grad=False)
        return fakes[id(t)]

    for original, sub in zip(module.modules(), clone.modules(), strict=True):
        for name, param in original.named_parameters(recurse=False):
            setattr(sub, name, fake(param))
        for name, buffer in original.named_buffers(recurse=False):
            sub.register_buffer(name, fake(buffer))
    return freeze_teacher(clone)


def _module_bytes(module: nn.Module) -> int:
    """Bytes of a module's parameters and buffers (shared tensors once)."""
    tensors = {id(t): t for t in (*module.parameters(), *module.buffers())}
    return sum(_nbytes(t) for t in tensors.values())


def _cast_weights(model: nn.Module, dtype: torch.dtype) -> None:
    """Cast floating-point parameters and buffers in place, as DeepSpeed does (``.data``
    assignment: ``module.to`` cannot swap fake parameters)."""
    for tensor in (*model.parameters(), *model.buffers()):
        if tensor.is_floating_point():
            tensor.data = tensor.data.to(dtype)


def _create_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Give the optimizer its state as its first step would, from zero gradients, without a
    forward and backward pass: the traced step is then the second one, whose peak holds the
    state. (Half the work of tracing two full steps.)"""
    for p in model.parameters():
        if p.requires_grad:
            p.grad = torch.zeros_like(p)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def _model_stats(model: nn.Module, optimizer: torch.optim.Optimizer,
                 masks: dict[nn.Parameter, torch.Tensor]) -> dict[str, int]:
    params = {id(p): p for p in model.parameters()}
    trainable = [p for p in params.values() if p.requires_grad]
    buffers = {id(b): b for b in model.buffers()}
    state = [v for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v)]
    leaves = [m for m in model.modules() if not list(m.children())]
    # The blocks FSDP shards one by one (``autotune.train.parallel._fully_shard``).
    blocks = [b for m in model.modules() if isinstance(m, nn.ModuleList) for b in m
              if any(p.requires_grad for p in b.parameters())]
    block_sizes = [sum(p.numel() for p in b.parameters()) for b in blocks]
    param_count = sum(p.numel() for p in trainable)
    return {
        "param_count": param_count,
        "param_bytes": sum(_nbytes(t) for t in (*params.values(), *buffers.values())),
        "mask_bytes": sum(_nbytes(m) for m in masks.values()),
        "gradient_bytes": sum(_nbytes(p) for p in trainable),
        "optimizer_bytes": sum(_nbytes(t) for t in state),
        "largest_layer_params": max(
            (sum(p.numel() for p in m.parameters(recurse=False)) for m in leaves), default=0),
        "block_params": max(block_sizes, default=0),
        "blocks_total_params": sum(
            p.numel() for p in {id(p): p for b in blocks for p in b.parameters()}.values()),
    }


def _nbytes(t: torch.Tensor) -> int:
    return int(t.numel() * t.element_size())


def _masks_as_parameters(phase: dict[str, int], mask_bytes: int) -> dict[str, int]:
    """Pruning masks are created outside a forward pass, so the tracker files them under
    activations; they live as long as the model, so they are reported with the parameters."""
    out = dict(phase)
    moved = min(mask_bytes, out["activations"])
    out["activations"] -= moved
    out["parameters"] += moved
    return {k: out[k] for k in (*CATEGORIES, "total")}
