import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import optuna
import pytest

from autotune.errors import ConfigError
from autotune.recipe import Recipe
from autotune.space import SPACES_DIR, load_space, parse_space, shipped_spaces

SHIPPED = shipped_spaces()
REPO = Path(__file__).resolve().parent.parent
optuna.logging.set_verbosity(optuna.logging.WARNING)


def sample(space, n, seed=0):
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    points = []
    for _ in range(n):
        trial = study.ask()
        points.append(space.suggest(trial))
        study.tell(trial, 0.0)
    return points


def test_at_least_two_spaces_ship():
    assert {p.stem for p in SHIPPED} >= {"bert", "mnist"}


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_space_loads_samples_and_holds_the_baseline(path):
    space = load_space(path)
    assert path.stem == space.model or path.stem.startswith(f"{space.model}_")
    baseline = Recipe()
    for point in sample(space, 40):
        values = space.knob_values(point)
        if values.get("parallelism", "single") != "single":
            values.setdefault("workers", 2)  # as a search gives them (--workers-per-trial)
        recipe = baseline.replace(**values)
        assert recipe.problems() == []
    space.point_for(Recipe(lr=1e-3))  # the baseline lies in the space


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_space_has_every_knob_family(path):
    knobs = {k.knob for k in load_space(path).knobs}
    families = {"precision", "batch_size", "accumulation_steps", "prune_ratio",
                "warmup_steps", "optimizer", "lr", "parallelism"}
    assert knobs >= families
    # weight_sparsity is a regulariser, never faster: no speed space searches it.
    assert "weight_sparsity" not in knobs


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_spaces_search_clipping_and_the_fused_optimizer_but_not_tf32(path):
    space = load_space(path)
    assert space.knob("grad_clip").choices == (0.0, 1.0)
    assert space.knob("fused_optimizer").choices == ("default", "fused")
    # They run on CPUs too, where a TF32 recipe is infeasible; channels_last only where a
    # convolution can use it.
    assert "tf32" not in space.names
    assert ("channels_last" in space.names) == (path.name == "mnist.yaml")
    # On this CPU a compile costs more than a trial can win back (docs/benchmarks.md); the
    # file says so where the knob would be.
    assert "compile" not in space.names
    assert path.name == "bert_parallel.yaml" or "compile (torch.compile) is left out" \
        in path.read_text()


def test_conditions_sample_only_when_they_hold():
    space = load_space(SPACES_DIR / "bert.yaml")
    points = sample(space, 60)
    for point in points:
        if point["optimizer"] == "sgd":
            assert "momentum" in point and "lr@sgd" in point and "lr" not in point
            lr_range = space.knob("lr@sgd")
        else:
            assert "momentum" not in point and "lr" in point
            lr_range = space.knob("lr")
        lr = point.get("lr", point.get("lr@sgd"))
        assert lr_range.low <= lr <= lr_range.high
    assert {p["optimizer"] for p in points} == {"sgd", "adam", "adamw"}


def test_sgd_variant_sets_the_recipe_lr():
    space = load_space(SPACES_DIR / "bert.yaml")
    recipe = space.to_recipe({"optimizer": "sgd", "lr@sgd": 0.1, "momentum": 0.8}, Recipe())
    assert (recipe.optimizer, recipe.lr, recipe.momentum) == ("sgd", 0.1, 0.8)


def test_integer_bounds_are_inclusive_in_the_sampler():
    space = parse_space("knobs:\n  accumulation_steps: {low: 1, high: 3}\n")
    seen = {p["accumulation_steps"] for p in sample(space, 60)}
    assert seen == {1, 2, 3}


def test_fixed_values_and_point_for_baseline():
    space = parse_space("knobs:\n  parallelism: {value: single}\n  lr: {low: 1e-4, high: 1e-2}\n")
    assert space.suggest(optuna.create_study().ask())["parallelism"] == "single"
    assert space.point_for(Recipe(lr=1e-3)) == {"parallelism": "single", "lr": 1e-3}
    with pytest.raises(ConfigError, match="baseline"):
        space.point_for(Recipe(lr=0.5))


BAD = """\
knobs:
  precision: {choices: [fp32, fp8]}
  batch_size: {low: 64, high: 16}
  lr: {low: 0, high: 1e-2, log: true}
  colour: {choices: [1]}
  momentum: {choices: [0.9], when: {optimizer: sgd}}
  warmup_steps: {choices: [0], shape: round}
  prune_ratio: {choices: [0.0, 1.5]}
"""


def test_every_problem_is_reported_with_line_key_rule_and_value(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(BAD)
    with pytest.raises(ConfigError) as info:
        load_space(path)
    problems = info.value.problems
    text = str(info.value)
    assert str(path) in text
    expected = [
        ("line 2, knobs.precision.choices", "fp8"),
        ("line 3, knobs.batch_size", "low <= high must hold, but got (low=64, high=16)"),
        ("line 4, knobs.lr", "log: true needs low > 0"),
        ("line 5, knobs.colour", "unknown knob"),
        ("line 6, knobs.momentum.when.optimizer", "defined earlier"),
        ("line 7, knobs.warmup_steps.shape", "unknown key"),
        ("line 8, knobs.prune_ratio.choices", "1.5"),
    ]
    for where, what in expected:
        assert any(p.startswith(where) and what in p for p in problems), (where, problems)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("", "expected a mapping"),
        ("knobs: {}", "non-empty mapping"),
        ("knobs: [1, 2]", "non-empty mapping"),
        ("foo: 1\nknobs:\n  lr: {value: 0.1}\n", "unknown top-level key 'foo'"),
        ("knobs:\n  lr: 0.1\n", "expected a mapping"),
        ("knobs:\n  lr: {choices: [0.1], low: 0.1, high: 1}\n", "exactly one of"),
        ("knobs:\n  precision: {low: 1, high: 2}\n", "takes choices"),
        ("knobs:\n  lr: {low: 0.1}\n", "high is missing"),
        ("knobs:\n  lr: {low: 0.1, high: 1, step: 0.1, log: true}\n", "cannot be combined"),
        ("knobs:\n  batch_size: {choices: [8, 8]}\n", "distinct"),
        ("knobs:\n  lr@sgd: {low: 0.1, high: 1}\n", "needs a tag and a when"),
        ("knobs:\n  optimizer: {choices: [sgd, adam]}\n  lr: {low: 0.1, high: 1}\n"
         "  lr@sgd: {low: 0.1, high: 1, when: {optimizer: sgd}}\n", "overlaps lr"),
        ("knobs:\n  lr: {low: 0.1, high: 1}\n  momentum: {value: 0.9, when: {lr: 0.1}}\n",
         "not a range"),
        ("knobs:\n  optimizer: {choices: [sgd]}\n  momentum: {value: 0.9, when: {optimizer: "
         "lamb}}\n", "not among the choices"),
        ("knobs:\n  offload: {value: true}\n", "cannot form a valid recipe"),
        ("knobs: [unclosed", "not valid YAML"),
    ],
)
def test_each_error(text, needle):
    with pytest.raises(ConfigError, match=None) as info:
        parse_space(text, source="x.yaml")
    assert needle in str(info.value), str(info.value)


def test_missing_file_lists_shipped_spaces(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_space(tmp_path / "nope.yaml")
    assert "file not found" in str(info.value) and "bert.yaml" in str(info.value)


def test_yaml_1_1_exponents_are_numbers():
    space = parse_space("knobs:\n  lr: {low: 1e-4, high: 3e-3, log: true}\n")
    assert space.knob("lr").low == pytest.approx(1e-4)


def test_spaces_dir_is_the_repository_folder():
    # The tests run on the editable install: edits to search_spaces/ apply without reinstalling.
    assert SPACES_DIR.resolve() == REPO / "search_spaces"


def test_wheel_ships_every_space_and_every_package(tmp_path):
    """``pip install .`` (not editable) must get the spaces and every subpackage of autotune."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for folder in ("autotune", "search_spaces"):
        shutil.copytree(REPO / folder, src / folder, ignore=ignore)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
         "--disable-pip-version-check", "-w", str(tmp_path / "dist"), str(src)],
        check=True, capture_output=True,
    )
    (wheel,) = (tmp_path / "dist").glob("autotune-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    spaces = {f"autotune/search_spaces/{p.name}" for p in SHIPPED}
    assert spaces <= names, sorted(spaces - names)
    packages = {
        str(init.relative_to(REPO)) for init in (REPO / "autotune").rglob("__init__.py")
    }
    assert packages <= names, f"add to [tool.setuptools] packages: {sorted(packages - names)}"


def test_a_checkout_without_an_install_finds_the_spaces_folder(monkeypatch):
    """On a machine where the checkout is only on PYTHONPATH (the GPU check), the package-data
    mapping does not exist: the checkout's own search_spaces/ is used."""
    import autotune.space as space_module

    def missing(name):
        raise ModuleNotFoundError(f"No module named {name!r}")

    monkeypatch.setattr(space_module, "files", missing)
    found = space_module._spaces_dir()
    assert found.name == "search_spaces" and (found / "bert.yaml").is_file()
