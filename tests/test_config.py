"""The knob table and the config's validation and YAML layouts."""

import re

import pytest

from bubblefence_plugin.core.config import BubbleFenceConfig


@pytest.mark.parametrize(
    "kwargs, word",
    [
        ({"eval_ratio": 0.0}, "eval_ratio"),
        ({"eval_ratio": 1.5}, "eval_ratio"),
        ({"validation_ratio": -0.1}, "validation_ratio"),
        ({"shell_layout": "middle"}, "shell_layout"),
        ({"anchor_method": "grid"}, "anchor_method"),
        ({"lid_k": 1}, "lid_k"),
        ({"min_radius": 0.6, "max_radius": 0.5}, "min_radius"),
        # A duplicate that follows its original brings its own near twins across (found
        # by a stress test: 9 pairs crossed at 0.95, cut_pairs 0).
        ({"dedup_policy": "follow", "dedup_threshold": 0.9}, "dedup_threshold >= leak"),
    ],
)
def test_config_rejects_bad_values_by_name(kwargs, word):
    with pytest.raises(ValueError, match=word):
        BubbleFenceConfig(**kwargs)
    assert BubbleFenceConfig(dedup_policy="follow", dedup_threshold=0.95).dedup_threshold == 0.95


def test_numpy_scalars_are_taken_as_the_python_values_they_hold():
    """An array's element or a mean (numpy scalars) is a knob's value like Python's, and
    stored as Python's (the state's JSON takes no numpy types)."""
    import json

    import numpy as np

    config = BubbleFenceConfig(seed=np.int64(3), lid_k=np.int32(20), eval_ratio=np.float32(0.25))
    assert (config.seed, config.lid_k, config.eval_ratio) == (3, 20, 0.25)
    assert type(config.seed) is int and type(config.eval_ratio) is float
    assert json.loads(json.dumps(config.to_dict()))["lid_k"] == 20
    assert BubbleFenceConfig(label_aware=np.bool_(False)).label_aware is False
    with pytest.raises(ValueError, match=r"lid_k=2\.5 must be"):
        BubbleFenceConfig(lid_k=np.float64(2.5))


def test_config_reads_reference_yaml(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(
        "dataset_splits:\n  eval_ratio: 0.25\n  train_ratio: 0.75\n"
        "nested_shells:\n  shell_configuration: inner_val\n"
        "anchor_placement:\n  qmc_sequence: halton\n  method: QMC\n"
        "random_seed:\n  random_seed: 7\n"
        "visualization:\n  dpi: 300\n"
    )
    with pytest.warns(UserWarning, match="visualization.dpi"):
        cfg = BubbleFenceConfig.from_yaml(path)
    assert (cfg.eval_ratio, cfg.shell_layout, cfg.qmc_sequence, cfg.seed) == (
        0.25,
        "inner_val",
        "halton",
        7,
    )
    assert BubbleFenceConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize(
    "text, message",
    [
        ("train_ratio: abc", r"dataset_splits.train_ratio='abc' must be a number in \(0, 1\)"),
        ("train_ratio: 1.5", r"dataset_splits.train_ratio=1.5 must be a number in \(0, 1\)"),
        ("train_ratio: .nan", r"dataset_splits.train_ratio=nan must be"),
        ("train_ratio: 0.7\n  eval_ratio: 0.2", r"train_ratio=0.7 and eval_ratio=0.2 disagree"),
    ],
)
def test_the_originals_train_ratio_is_checked_by_its_own_name(tmp_path, text, message):
    path = tmp_path / "c.yaml"
    path.write_text(f"dataset_splits:\n  {text}\n")
    with pytest.raises(ValueError, match=message):
        BubbleFenceConfig.from_yaml(path)
    path.write_text("dataset_splits:\n  train_ratio: 0.7\n")
    assert BubbleFenceConfig.from_yaml(path).eval_ratio == pytest.approx(0.3)


def test_knob_table_describes_every_field_and_its_default_is_valid():
    import dataclasses

    from bubblefence_plugin.core.config import KNOBS, check_knob

    names = [f.name for f in dataclasses.fields(BubbleFenceConfig)]
    assert list(KNOBS) == names
    defaults = BubbleFenceConfig()
    for name, knob in KNOBS.items():
        assert check_knob(name, getattr(defaults, name)) == getattr(defaults, name)
        assert knob.label and knob.help and knob.label != name


@pytest.mark.parametrize(
    "name, text, expected",
    [
        ("dedup_enabled", "false", False),
        ("dedup_enabled", "Yes", True),
        ("eval_ratio", "0.3", 0.3),
        ("seed", "7", 7),
        ("bubble_size", "none", None),
        ("shell_layout", "INNER_VAL", "inner_val"),
        ("eval_ratio", 1, None),  # typed values are only checked: 1 is out of (0, 1)
    ],
)
def test_parse_knob_converts_text_to_the_knobs_type(name, text, expected):
    from bubblefence_plugin.core.config import parse_knob

    if expected is None and name == "eval_ratio":
        with pytest.raises(ValueError, match=r"eval_ratio=1\.0 must be a number in \(0, 1\)"):
            parse_knob(name, text)
    else:
        assert parse_knob(name, text) == expected


def test_unknown_names_suggest_the_closest_knob(tmp_path):
    with pytest.raises(ValueError, match=r"'eval_ratoi' \(did you mean 'eval_ratio'\?\)"):
        BubbleFenceConfig.from_dict({"eval_ratoi": 0.3})
    path = tmp_path / "c.yaml"
    path.write_text("dataset_splits:\n  eval_ratoi: 0.3\n")
    with pytest.raises(ValueError, match=r"dataset_splits.eval_ratoi.*did you mean"):
        BubbleFenceConfig.from_yaml(path)
    # The Python constructor and `replace` name it too (Python says only "unexpected
    # keyword argument"); a TypeError still, as for any call with a wrong keyword.
    with pytest.raises(TypeError, match=r"'eval_ratoi' \(did you mean 'eval_ratio'\?\)"):
        BubbleFenceConfig(eval_ratoi=0.3)
    with pytest.raises(TypeError, match=r"'sed' \(did you mean 'seed'\?\)"):
        BubbleFenceConfig().replace(sed=3)
    assert BubbleFenceConfig(eval_ratio=0.3).replace(seed=3) == BubbleFenceConfig(0.3, seed=3)


def test_nested_yaml_flags_written_as_text_keep_their_meaning(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text('deduplication:\n  enabled: "false"\nclass_aware: "no"\n')
    cfg = BubbleFenceConfig.from_yaml(path)
    assert cfg.dedup_enabled is False and cfg.class_aware is False


def test_missing_config_file_is_a_value_error_naming_it(tmp_path):
    with pytest.raises(ValueError, match="cannot read the config file"):
        BubbleFenceConfig.from_yaml(tmp_path / "nope.yaml")


def test_frozen_changes_and_help_come_from_the_table():
    from bubblefence_plugin.core.config import KNOBS, frozen_changes, knob_help

    old = BubbleFenceConfig()
    assert frozen_changes(old, old.replace(eval_ratio=0.3)) == []
    assert frozen_changes(old, old.replace(seed=1, model_name="m")) == ["seed", "model_name"]
    # The leak threshold may rise, never fall (earlier pairs in between would cross).
    assert frozen_changes(old, old.replace(leak_threshold=0.97)) == []
    assert frozen_changes(old, old.replace(leak_threshold=0.9)) == ["leak_threshold"]
    text = knob_help()
    assert all(f"  {name} (" in text for name in KNOBS)
    assert "seed (an integer in [0, 2**63 - 1]; default 42)" in text
    assert "closure_threshold (a number in (0, 1] or empty; default empty)" in text


@pytest.mark.parametrize(
    "text",
    [
        "eval_ratio: 0.2\neval_ratio: 0.4\n",
        "dataset_splits:\n  eval_ratio: 0.2\n  eval_ratio: 0.4\n",
    ],
)
def test_a_key_given_twice_is_refused_not_read_as_the_last(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    line = text.count("\n")  # the second key is on the last line
    with pytest.raises(ValueError) as refused:
        BubbleFenceConfig.from_yaml(path)
    # One line naming the file and line, not YAML's "<unicode string>" and a quoted snippet.
    assert str(refused.value) == (
        f"{path}, line {line}: not a valid YAML config: key 'eval_ratio' is given twice"
    )


@pytest.mark.parametrize(
    "text, keys",
    [
        (
            "dataset_splits:\n  eval_ratio: 0.3\neval_ratio: 0.25\n",
            "dataset_splits.eval_ratio and eval_ratio",
        ),
        (
            "eval_ratio: 0.25\ndataset_splits:\n  eval_ratio: 0.3\n",
            "eval_ratio and dataset_splits.eval_ratio",
        ),
    ],
)
def test_a_knob_given_under_both_layouts_is_refused_not_read_as_the_last(tmp_path, text, keys):
    # Found by a hostile-input walk: the last one silently won, so the order decided.
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=f"^{re.escape(keys)} both set eval_ratio; give one"):
        BubbleFenceConfig.from_yaml(path)


def test_a_config_file_that_is_not_text_is_refused_naming_it(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_bytes(b"\xff\xfe\x00binary")
    with pytest.raises(ValueError, match=rf"^{re.escape(str(path))}: not a text \(UTF-8\) file"):
        BubbleFenceConfig.from_yaml(path)


def test_a_yaml_syntax_error_names_the_file_and_line(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("eval_ratio: 0.2\nseed: [1, 2\n")
    with pytest.raises(ValueError, match=rf"^{re.escape(str(path))}, line \d+: not a valid YAML"):
        BubbleFenceConfig.from_yaml(path)


def test_unknown_names_are_listed_with_the_plural_of_their_noun():
    from bubblefence_plugin.core.config import unknown_names_message

    assert unknown_names_message(["dgo", "cta"], ["dog", "cat"], "class") == (
        "unknown classes 'dgo' (did you mean 'dog'?), 'cta' (did you mean 'cat'?)"
    )
    assert unknown_names_message(["x", "y"], [], "config key") == "unknown config keys 'x', 'y'"
    assert unknown_names_message(["x"], [], "config key") == "unknown config key 'x'"
