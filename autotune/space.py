"""The search space: for each knob, the values a search may try, with conditions between knobs.

File form (``search_spaces/*.yaml``)::

    model: bert                 # the task this space was written for (informational)
    knobs:
      precision: {choices: [fp32, bf16]}        # categorical
      batch_size: {choices: [16, 32, 64]}
      accumulation_steps: {low: 1, high: 4}     # int knob: both bounds inclusive
      lr: {low: 1.0e-4, high: 3.0e-3, log: true}
      momentum: {low: 0.8, high: 0.95, when: {optimizer: sgd}}   # only sampled for SGD
      parallelism: {value: single}              # fixed
      lr@sgd: {low: 0.01, high: 0.3, log: true, when: {optimizer: sgd}}  # a variant of lr

``name@tag`` declares a variant of knob ``name`` with its own range, for when its condition
holds (SGD wants other learning rates than Adam). The sampler sees ``lr@sgd`` as its own
parameter; the recipe gets ``lr``. Every variant needs a ``when``, and at most one variant of a
knob may apply to any point.

A knob's type (int, float, str, bool) is the ``Recipe`` field's type. Integer bounds are
inclusive, once, here; the conversion to a sampler keeps them inclusive (Optuna's
``suggest_int`` is inclusive too). Knobs the space leaves out, and conditional knobs whose
condition does not hold, keep the baseline recipe's value.

Loading validates everything and raises one ``ConfigError`` listing every problem with file,
key, line, rule and value. This module knows nothing of Optuna: ``SearchSpace.suggest`` takes any
object with Optuna's ``suggest_categorical/suggest_int/suggest_float`` methods.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any, Protocol

import yaml

from autotune.errors import ConfigError
from autotune.recipe import Recipe, coerce_value, knob_types, recipe_problems


def _spaces_dir() -> Path:
    """Where the shipped spaces are: the installed package data, else (a checkout run without
    installing, as on a GPU machine: ``PYTHONPATH=$PWD``) the checkout's own folder."""
    try:
        return Path(str(files("autotune.search_spaces")))
    except ModuleNotFoundError:
        return Path(__file__).resolve().parent.parent / "search_spaces"


SPACES_DIR = _spaces_dir()
"""The shipped spaces: the top-level ``search_spaces/`` folder, installed as package data
(``autotune.search_spaces``, mapped in pyproject.toml), so an editable and a wheel install both
find them; a checkout on ``PYTHONPATH`` without an install finds the folder itself."""
_KNOB_KEYS = {"choices", "low", "high", "step", "log", "value", "when", "help"}
SYSTEM_PARAM = "system"
"""The sampler's parameter that picks one of a restricted space's system configurations
(``SearchSpace.systems``); not a knob name (those are ``Recipe`` fields)."""


class Suggester(Protocol):
    """What ``SearchSpace.suggest`` needs: the define-by-run half of an Optuna trial."""

    def suggest_categorical(self, name: str, choices: Any) -> Any: ...
    def suggest_int(
        self, name: str, low: int, high: int, step: int = 1, log: bool = False
    ) -> int: ...
    def suggest_float(
        self, name: str, low: float, high: float, *, step: float | None = None, log: bool = False
    ) -> float: ...


@dataclass(frozen=True)
class Knob:
    """The values one knob may take: ``choices``, a ``low``..``high`` range, or one ``value``."""

    name: str
    """Parameter name seen by the sampler (``lr`` or a variant such as ``lr@sgd``)."""
    kind: type
    choices: tuple[Any, ...] | None = None
    low: float | None = None
    high: float | None = None
    step: float | None = None
    log: bool = False
    when: tuple[tuple[str, tuple[Any, ...]], ...] = ()
    """Conditions, all of which must hold: (other knob, values it must have)."""

    @property
    def knob(self) -> str:
        """The recipe knob this sets (``lr`` for ``lr@sgd``)."""
        return self.name.split("@", 1)[0]

    def applies(self, values: Mapping[str, Any]) -> bool:
        """Whether every condition holds for ``values`` (recipe knob name -> value)."""
        return all(values.get(other) in wanted for other, wanted in self.when)

    @property
    def is_fixed(self) -> bool:
        return self.choices is not None and len(self.choices) == 1

    def values_for_condition(self) -> tuple[Any, ...] | None:
        """The finite set of values this knob can take (None for a range)."""
        return self.choices

    def suggest(self, trial: Suggester) -> Any:
        if self.choices is not None:
            if self.is_fixed:
                return self.choices[0]
            return trial.suggest_categorical(self.name, list(self.choices))
        assert self.low is not None and self.high is not None
        if self.kind is int:
            return trial.suggest_int(
                self.name, int(self.low), int(self.high), step=int(self.step or 1), log=self.log
            )
        return trial.suggest_float(
            self.name, float(self.low), float(self.high), step=self.step, log=self.log
        )

    def contains(self, value: Any) -> bool:
        """Whether ``value`` is one this knob can take (used to check the baseline fits)."""
        if self.choices is not None:
            return value in self.choices
        assert self.low is not None and self.high is not None
        return self.low <= value <= self.high


@dataclass(frozen=True)
class SearchSpace:
    """A validated search space: knobs in file order (conditions refer to earlier knobs)."""

    knobs: tuple[Knob, ...]
    source: str = "<memory>"
    model: str | None = None
    doc: dict[str, Any] = field(default_factory=dict, compare=False)
    systems: tuple[tuple[str, tuple[tuple[str, Any], ...]], ...] = ()
    """Whole system configurations to choose among, ``(label, ((knob, value), ...))`` each,
    when screening restricted the space (``restrict_to_systems``): sampled as one categorical
    parameter ``system`` before ``knobs`` (which then hold the other knobs), so that only
    configurations that were measured and kept are proposed, never a mix of their values."""

    def suggest(self, trial: Suggester) -> dict[str, Any]:
        """Sample one point, define-by-run: knobs whose conditions fail are not sampled.

        Returns only the sampled knobs' values (fixed knobs included); ``to_recipe`` fills the
        rest from the baseline.
        """
        params: dict[str, Any] = {}
        values: dict[str, Any] = {}
        if self.systems:
            labels = [label for label, _ in self.systems]
            label = labels[0] if len(labels) == 1 else \
                trial.suggest_categorical(SYSTEM_PARAM, labels)
            params[SYSTEM_PARAM] = label
            values.update(self.system_values(label))
        for knob in self.knobs:
            if knob.applies(values):
                params[knob.name] = values[knob.knob] = knob.suggest(trial)
        return params

    def system_values(self, label: str) -> dict[str, Any]:
        """The knob values of the system configuration ``label`` (``systems``)."""
        for name, values in self.systems:
            if name == label:
                return dict(values)
        raise ConfigError(self.source, [f"system: {label!r} is not one of the kept system "
                                        f"configurations ({[n for n, _ in self.systems]})"])

    def knob_values(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """A sampled point as recipe knob values: variants (``lr@sgd``) under their knob's
        name, and ``system`` as its configuration's knobs."""
        out: dict[str, Any] = {}
        for name, value in params.items():
            if name == SYSTEM_PARAM and self.systems:
                out.update(self.system_values(value))
            else:
                out[name.split("@", 1)[0]] = value
        return out

    def to_recipe(self, params: Mapping[str, Any], baseline: Recipe) -> Recipe:
        """The recipe for a sampled point: the baseline with the point's knobs set."""
        return baseline.replace(**self.knob_values(params))

    def restrict_to_systems(self, names: Sequence[str],
                            configs: Sequence[tuple[str, Mapping[str, Any]]]) -> SearchSpace:
        """This space with the knobs ``names`` replaced by a choice among whole
        configurations of them (``systems``: label, knob values), e.g. the system
        configurations a screening kept."""
        return dataclasses.replace(
            self, knobs=tuple(k for k in self.knobs if k.knob not in names),
            systems=tuple((label, tuple(values.items())) for label, values in configs))

    def point_for(self, recipe: Recipe) -> dict[str, Any]:
        """The point (knob values) that reproduces ``recipe`` in this space, for seeding the
        searcher with the baseline. Raises ``ConfigError`` if the recipe lies outside it."""
        point: dict[str, Any] = {}
        values: dict[str, Any] = {}
        problems = []
        if self.systems:
            label = next((name for name, config in self.systems
                          if all(getattr(recipe, k) == v for k, v in config)), None)
            if label is None:
                raise ConfigError(self.source, [
                    "system: the recipe's system configuration is not one of the kept ones "
                    f"({[n for n, _ in self.systems]})"])
            point[SYSTEM_PARAM] = label
            values.update(self.system_values(label))
        for knob in self.knobs:
            if not knob.applies(values):
                continue
            value = values[knob.knob] = getattr(recipe, knob.knob)
            if not knob.contains(value):
                allowed = knob.choices if knob.choices is not None else (knob.low, knob.high)
                problems.append(
                    f"knobs.{knob.name}: the baseline recipe's value {value!r} is outside the "
                    f"space ({allowed!r}); every search evaluates the baseline, so add it"
                )
            point[knob.name] = value
        if problems:
            raise ConfigError(self.source, problems)
        return point

    @property
    def names(self) -> list[str]:
        """Sampler parameter names, in order."""
        return [k.name for k in self.knobs]

    def knob(self, name: str) -> Knob:
        for k in self.knobs:
            if k.name == name:
                return k
        raise KeyError(name)

    def grid(
        self,
        baseline: Recipe,
        vary: Sequence[str],
        pick: Mapping[str, Callable[[tuple[Any, ...]], Any]] | None = None,
    ) -> list[Recipe]:
        """Recipes for every combination of the knobs in ``vary`` (their choices; for a range,
        its bounds and the powers of two between them), conditions respected, in file order.

        Each knob in ``pick`` takes one value, ``pick[name](values)`` of the definition that
        applies (e.g. the most memory-hungry optimizer); every other knob keeps the
        baseline's value. Used by ``autotune estimate`` to tabulate predicted memory.
        """
        pick = dict(pick or {})
        points: list[dict[str, Any]] = [{}]
        for knob in self.knobs:
            name = knob.knob
            if name not in vary and name not in pick:
                continue
            expanded = []
            for point in points:
                if not knob.applies({**baseline.to_dict(), **point}):
                    expanded.append(point)
                    continue
                values = knob.choices if knob.choices is not None else _grid_values(knob)
                if name in pick:
                    values = (pick[name](values),)
                expanded += [{**point, name: value} for value in values]
            points = expanded
        recipes: list[Recipe] = []
        for point in points:
            recipe = baseline.replace(**point)
            if recipe not in recipes:
                recipes.append(recipe)
        return recipes

    def size_hint(self) -> str:
        """Short description for progress output: knob names and their ranges."""
        parts = [f"{SYSTEM_PARAM}=[{len(self.systems)} kept configurations]"] \
            if self.systems else []
        for k in self.knobs:
            if k.choices is not None:
                parts.append(f"{k.name}={list(k.choices)}")
            else:
                parts.append(f"{k.name}=[{k.low}..{k.high}{' log' if k.log else ''}]")
        return ", ".join(parts)


# -- loading --------------------------------------------------------------------------------


def _grid_values(knob: Knob) -> tuple[Any, ...]:
    """A range's values for a grid: its bounds, and for an int range the powers of two
    between them (batch sizes)."""
    assert knob.low is not None and knob.high is not None
    values = [knob.low, knob.high]
    if knob.kind is int:
        power = 1
        while power < knob.high:
            if power > knob.low:
                values.append(power)
            power *= 2
        values = [int(v) for v in values]
    return tuple(sorted(set(values)))


def shipped_space_path(model: str) -> Path:
    """Path of the space shipped for a built-in model (``search_spaces/<model>.yaml``)."""
    return SPACES_DIR / f"{model}.yaml"


def shipped_spaces() -> list[Path]:
    """Every shipped search-space file, sorted by name."""
    return sorted(SPACES_DIR.glob("*.yaml"))


def load_space(path: str | Path) -> SearchSpace:
    """Read and validate a search-space file; every problem is reported at once."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        shipped = ", ".join(p.name for p in shipped_spaces())
        raise ConfigError(
            str(path), [f"file not found (shipped spaces in {SPACES_DIR}: {shipped})"]
        ) from None
    except OSError as exc:
        raise ConfigError(str(path), [f"cannot read: {exc}"]) from None
    return parse_space(text, source=str(path))


def parse_space(text: str, *, source: str = "<string>") -> SearchSpace:
    """Parse and validate search-space YAML text (see the module docstring for the format)."""
    try:
        node = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(source, [f"not valid YAML: {exc}"]) from None
    lines = _line_map(node) if node is not None else {}
    v = _Validator(source, lines)
    if not isinstance(data, Mapping):
        raise ConfigError(source, [f"expected a mapping with a 'knobs' key, got {data!r}"])
    for key in data:
        if key not in ("knobs", "model", "description"):
            v.add((key,), f"unknown top-level key {key!r}; expected knobs, model, description")
    knobs_data = data.get("knobs")
    if not isinstance(knobs_data, Mapping) or not knobs_data:
        v.add(("knobs",), f"must be a non-empty mapping of knob name to values, got {knobs_data!r}")
        raise ConfigError(source, v.problems)
    knobs: list[Knob] = []
    for name, spec in knobs_data.items():
        knob = v.knob(str(name), spec, {k.name: k for k in knobs})
        if knob is not None:
            knobs.append(knob)
    if not v.problems:
        _check_fixed_combination(v, knobs)
    if v.problems:
        raise ConfigError(source, v.problems)
    model = data.get("model")
    return SearchSpace(tuple(knobs), source=source, model=None if model is None else str(model))


def _line_map(node: yaml.Node, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], int]:
    """Map each key path to its 1-based line in the file, for error messages."""
    out: dict[tuple[str, ...], int] = {}
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            path = (*prefix, str(key_node.value))
            out[path] = key_node.start_mark.line + 1
            out.update(_line_map(value_node, path))
    return out


class _Validator:
    """Collects problems with file, key path and line, so they can be raised once."""

    def __init__(self, source: str, lines: dict[tuple[str, ...], int]) -> None:
        self.source = source
        self.lines = lines
        self.problems: list[str] = []

    def add(self, path: tuple[str, ...], message: str) -> None:
        line = None
        for n in range(len(path), 0, -1):
            line = self.lines.get(path[:n])
            if line is not None:
                break
        where = f"line {line}, " if line is not None else ""
        self.problems.append(f"{where}{'.'.join(path)}: {message}")

    def knob(self, name: str, spec: Any, earlier: dict[str, Knob]) -> Knob | None:
        types = knob_types()
        path = ("knobs", name)
        base, _, tag = name.partition("@")
        if base not in types:
            self.add(path, f"unknown knob; known knobs: {', '.join(types)}")
            return None
        kind = types[base]
        if "@" in name and (not tag or not isinstance(spec, Mapping) or "when" not in spec):
            self.add(path, f"a variant ({base}@tag) needs a tag and a when: condition")
            return None
        if "@" not in name and base in {k.knob for k in earlier.values()}:
            self.add(path, f"{base} is already defined by a variant above; put {base} first")
            return None
        if not isinstance(spec, Mapping):
            self.add(path, f"expected a mapping such as {{choices: [...]}}, got {spec!r}")
            return None
        count = len(self.problems)
        for key in spec:
            if key not in _KNOB_KEYS:
                self.add((*path, str(key)), f"unknown key; expected one of {sorted(_KNOB_KEYS)}")
        forms = [k for k in ("choices", "value", "low") if k in spec]
        if "high" in spec and "low" not in spec:
            forms.append("high")
        if len(forms) != 1:
            self.add(path, "give exactly one of: choices: [...], value: X, or low: and high:")
            return None
        when = self._when(path, spec.get("when"), earlier)
        if "choices" in spec or "value" in spec:
            raw = spec["choices"] if "choices" in spec else [spec["value"]]
            key = "choices" if "choices" in spec else "value"
            choices = self._choices((*path, key), kind, raw)
            for k in ("step", "log"):
                if k in spec:
                    self.add((*path, k), f"applies only to low/high ranges, not to {key}")
            if len(self.problems) > count or choices is None:
                return None
            knob = Knob(name, kind, choices=choices, when=when)
            self._check_overlap(path, knob, earlier)
            return knob
        knob = self._range(path, name, kind, spec, when, count)
        if knob is not None:
            self._check_overlap(path, knob, earlier)
        return knob

    def _check_overlap(self, path: tuple[str, ...], knob: Knob, earlier: dict[str, Knob]) -> None:
        """Two definitions of one recipe knob must never apply to the same point."""
        for other in earlier.values():
            if other.knob != knob.knob:
                continue
            mine, theirs = dict(knob.when), dict(other.when)
            shared = set(mine) & set(theirs)
            if not any(not set(mine[k]) & set(theirs[k]) for k in shared):
                self.add(
                    path,
                    f"overlaps {other.name}: both can apply to the same point; give them "
                    "conditions on the same knob with disjoint values",
                )

    def _choices(self, path: tuple[str, ...], kind: type, raw: Any) -> tuple[Any, ...] | None:
        if not isinstance(raw, list) or not raw:
            self.add(path, f"must be a non-empty list, got {raw!r}")
            return None
        out = []
        for value in raw:
            ok, converted = coerce_value(kind, value)
            if not ok:
                self.add(path, f"expected {kind.__name__} values, got {value!r}")
                continue
            problem = _value_problem(path[1].split("@", 1)[0], converted)
            if problem:
                self.add(path, problem)
            out.append(converted)
        if len(set(out)) != len(out):
            self.add(path, f"values must be distinct, got {raw!r}")
        return tuple(out)

    def _range(
        self,
        path: tuple[str, ...],
        name: str,
        kind: type,
        spec: Mapping[str, Any],
        when: tuple[tuple[str, tuple[Any, ...]], ...],
        count: int,
    ) -> Knob | None:
        if kind not in (int, float):
            self.add(path, f"a {kind.__name__} knob takes choices: [...], not low/high")
            return None
        bounds = {}
        for key in ("low", "high", "step"):
            if key not in spec:
                if key != "step":
                    self.add(path, f"a range needs both low and high; {key} is missing")
                continue
            ok, value = coerce_value(kind, spec[key])
            if not ok or not math.isfinite(value):
                self.add((*path, key), f"expected a finite {kind.__name__}, got {spec[key]!r}")
            else:
                bounds[key] = value
        log = spec.get("log", False)
        if not isinstance(log, bool):
            self.add((*path, "log"), f"expected true or false, got {log!r}")
        if len(self.problems) > count:
            return None
        low, high, step = bounds["low"], bounds["high"], bounds.get("step")
        if not low <= high:
            self.add(path, f"low <= high must hold, but got (low={low!r}, high={high!r})")
        if log and low <= 0:
            self.add(path, f"log: true needs low > 0, got low={low!r}")
        if step is not None and step <= 0:
            self.add((*path, "step"), f"must be > 0, got {step!r}")
        if step is not None and log:
            self.add(path, "step and log: true cannot be combined (Optuna's rule)")
        for key, value in (("low", low), ("high", high)):
            problem = _value_problem(name.split("@", 1)[0], value)
            if problem:
                self.add((*path, key), problem)
        if len(self.problems) > count:
            return None
        return Knob(name, kind, low=low, high=high, step=step, log=bool(log), when=when)

    def _when(
        self, path: tuple[str, ...], raw: Any, earlier: dict[str, Knob]
    ) -> tuple[tuple[str, tuple[Any, ...]], ...]:
        if raw is None:
            return ()
        if not isinstance(raw, Mapping) or not raw:
            self.add((*path, "when"), f"expected a mapping such as {{optimizer: sgd}}, got {raw!r}")
            return ()
        out = []
        by_knob = {k.knob: k for k in earlier.values()}
        for other, wanted in raw.items():
            other = str(other)
            if other not in by_knob:
                self.add(
                    (*path, "when", other),
                    "a condition must refer to a knob defined earlier in the file",
                )
                continue
            known = by_knob[other].values_for_condition()
            if known is None:
                self.add(
                    (*path, "when", other),
                    "a condition must refer to a knob with choices (or a value), not a range",
                )
                continue
            values = tuple(wanted) if isinstance(wanted, list) else (wanted,)
            missing = [w for w in values if w not in known]
            if missing:
                self.add(
                    (*path, "when", other),
                    f"{missing!r} not among the choices of {other} ({list(known)!r})",
                )
                continue
            out.append((other, values))
        return tuple(out)


def _value_problem(name: str, value: Any) -> str | None:
    """The recipe rule a single knob value breaks on its own (e.g. precision 'fp8')."""
    probe = {**Recipe().to_dict(), name: value}
    # Cross-knob rules are checked on whole recipes; here only rules that mention this knob
    # alone, so pair it with values that satisfy the others.
    if name == "workers" and isinstance(value, int) and value > 1:
        probe["parallelism"] = "ddp"
    if name == "offload" and value:
        probe["parallelism"] = "zero2"
    if name in ("prefetch_factor", "persistent_workers"):
        probe["dataloader_workers"] = 1
    if name == "prune_after_steps" and isinstance(value, int) and value > 0:
        probe["prune_ratio"] = 0.5
    if name == "distill_temperature":
        probe["distill_weight"] = 0.5
    if name in ("pipeline_microbatches", "pipeline_schedule"):
        probe.update(parallelism="pipeline", workers=2)
    problems = [q for q in recipe_problems(probe) if q.startswith(f"{name}:")]
    return problems[0].split(": ", 1)[1] if problems else None


def _check_fixed_combination(v: _Validator, knobs: list[Knob]) -> None:
    """Knobs fixed to one value must form a valid recipe together (e.g. offload without ZeRO)."""
    fixed = {k.knob: k.choices[0] for k in knobs if k.is_fixed and not k.when and k.choices}
    problems = recipe_problems({**Recipe().to_dict(), **fixed})
    for problem in problems:
        v.add(("knobs",), f"the fixed values cannot form a valid recipe: {problem}")
