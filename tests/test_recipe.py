import pytest
import yaml

from autotune.errors import ConfigError
from autotune.recipe import Recipe, baseline_recipe

RECIPES = [
    Recipe(),
    Recipe(precision="bf16", batch_size=64, accumulation_steps=4, prune_ratio=0.3,
           warmup_steps=50, schedule="cosine", decay_steps=777, optimizer="sgd",
           lr=0.05123456789, momentum=0.95, weight_decay=0.0),
    Recipe(precision="fp16", lr=1e-4, optimizer="adam"),
    Recipe(parallelism="zero3", workers=2, offload=True, lr=3.3333333333333335e-4),
]


@pytest.mark.parametrize("recipe", RECIPES)
def test_yaml_round_trip_is_exact(recipe):
    again = Recipe.from_yaml(recipe.to_yaml())
    assert again == recipe
    assert again.to_dict() == recipe.to_dict()
    assert all(type(a) is type(b) for a, b in zip(again.to_dict().values(),
                                                   recipe.to_dict().values()))


def test_file_round_trip(tmp_path):
    recipe = RECIPES[1]
    recipe.save(tmp_path / "r.yaml")
    assert Recipe.load(tmp_path / "r.yaml") == recipe


def test_load_reads_best_recipe_documents(tmp_path):
    path = tmp_path / "best_recipe.yaml"
    path.write_text(yaml.safe_dump({"recipe": RECIPES[2].to_dict(), "measured": {"tta": 1.0}}))
    assert Recipe.load(path) == RECIPES[2]


def test_every_problem_is_reported_at_once():
    with pytest.raises(ConfigError) as info:
        Recipe.from_dict({"precision": "fp8", "batch_size": 0, "colour": "red", "offload": True,
                          "lr": -1.0})
    text = str(info.value)
    assert len(info.value.problems) == 5
    for needle in ("fp8", "batch_size", "'colour'", "offload", "lr"):
        assert needle in text


def test_type_errors_and_cross_knob_rules_are_reported_together():
    with pytest.raises(ConfigError) as info:
        Recipe.from_dict({"batch_size": "big", "offload": True, "workers": 2})
    problems = info.value.problems
    assert len(problems) == 3, problems
    assert problems[0].startswith("batch_size: expected int")
    assert any(p.startswith("offload: CPU offload applies only") for p in problems)
    assert any(p.startswith("workers: parallelism 'single'") for p in problems)
    with pytest.raises(ConfigError) as info:
        Recipe(precision=16, lr=-1.0)  # the constructor reports both kinds too
    assert [p.split(":")[0] for p in info.value.problems] == ["precision", "lr"]


def test_a_rule_on_a_knob_that_did_not_parse_is_skipped():
    # parallelism did not parse: saying "offload needs ZeRO, got 'single'" would blame the
    # default value the user never wrote; only the type error is reported.
    with pytest.raises(ConfigError) as info:
        Recipe.from_dict({"parallelism": 3, "offload": True, "workers": 2})
    assert info.value.problems == ["parallelism: expected str, got 3 (int)"]


def test_wrong_types_are_named():
    with pytest.raises(ConfigError, match=r"batch_size: expected int, got '32'"):
        Recipe.from_dict({"batch_size": "32"})
    with pytest.raises(ConfigError, match="expected bool"):
        Recipe.from_dict({"offload": "yes"})


def test_numeric_strings_from_yaml_1_1_are_accepted():
    # PyYAML reads 1e-4 (no dot) as a string; users write it anyway.
    assert Recipe.from_yaml("lr: 1e-4").lr == 1e-4


def test_int_for_float_knob_is_stored_as_float():
    assert isinstance(Recipe(lr=1).lr, float)


def test_impossible_combinations():
    with pytest.raises(ConfigError, match="offload"):
        Recipe(offload=True)
    with pytest.raises(ConfigError, match="workers"):
        Recipe(workers=2)


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        Recipe.load(tmp_path / "nope.yaml")


def test_baseline_and_replace():
    base = baseline_recipe(64, 2e-3)
    assert (base.precision, base.optimizer, base.warmup_steps, base.batch_size) == (
        "fp32", "adamw", 0, 64)
    assert base.replace(precision="bf16").precision == "bf16"
    assert "bs=64" in base.describe()
