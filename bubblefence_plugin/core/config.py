"""Every knob of the algorithm in one table, validated up front (SPEC 2), and the YAML loader.

`KNOBS` is the one place a knob is described, in the manner of scikit-learn's
``_parameter_constraints``: its type, range or choices, label, help, whether it is a
common or an advanced setting, whether it is frozen after the first round, and its key
in the original BubbleFence's nested YAML. Validation (`check_knob`), the operator
forms, the CLI's ``--set`` parsing and help (`parse_knob`, `knob_help`), the YAML
mapping (`translate_reference_layout`) and the frozen check (`frozen_changes`) all
read it; the dataclass below only holds the defaults.

Example usage::

    cfg = BubbleFenceConfig(eval_ratio=0.3)
    cfg = BubbleFenceConfig.from_yaml("bubblefence.yaml")   # ours or the original's layout
    check_knob("eval_ratio", 1.5)   # ValueError: eval_ratio=1.5 must be a number in (0, 1)
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import numbers
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

# Integers go into MongoDB run documents, which hold signed 64-bit integers (numpy's
# generators take any such seed).
INT64_MAX = 2**63 - 1


# Default gap between leak_threshold and closure_threshold. Measured with
# bench/bench_quality.py at full size, later rounds keeping the margin (follow.keep_margins):
# 0.02: leak@0.95 after the last round 0.0061 / 0.0097 (3 / 4 rounds), labels reaching
# eval/val/test summed over all 8 cases 1,008; 0.03: 0.0031 / 0.0038, labels 1,013.
# Real photos (`photos`: crops of 21 photos embedded by EfficientNet-Lite0, 3 rounds) leak
# 0.0079 / 0.0099 (without / with labels) after the last round at 0.03. At 0.04, with
# pipeline._fill_quota's order: photos 0.0040 / 0.0020, the mixtures in 3 / 4 rounds
# 0.0015 / 0.0010 without labels and 0.0031 / 0.0010 with, and the mixture in 3 rounds
# reaches 47/44/46 labels in eval/val/test against the oracle's 49/46/48 (0.03:
# 46/46/45). Coarser units need the twin components to serve the labels' caps before the
# margin's units pass them (pipeline._fill_quota): without that, a 40-sample class went
# to eval whole in 32-d labelled data (tests/test_labels_groups.py). 0.05 (same without
# that order) cost 18 of 1,119 labels over 6 cases and the closure components 1.5x the
# time (2026-12-03).
CLOSURE_MARGIN = 0.04


@dataclass(frozen=True)
class Knob:
    """What one knob accepts and how the App and the CLI show it.

    Numbers lie in ``[low, high]``, with an open end where ``low_open``/``high_open``;
    a bound of None is no bound. ``optional`` knobs also take None, which means the
    value is derived (the help says from what).
    """

    kind: type
    label: str
    help: str
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple[str, ...] = ()
    optional: bool = False
    advanced: bool = True
    # Changes the meaning of assignments already made: fixed once a state holds samples.
    frozen: bool = False
    # May rise but not fall once a state holds samples: lowered, it would make pairs of
    # earlier samples near twins that earlier rounds put on both sides, uncounted.
    rises_only: bool = False
    # The key in the original BubbleFence's nested YAML (shared/reference-config.md).
    reference: tuple[str, ...] = ()

    def refuses(self, stored: Any, asked: Any) -> bool:
        """Whether a state whose rounds ran at ``stored`` refuses ``asked`` from now on."""
        return (self.frozen and asked != stored) or (self.rises_only and asked < stored)

    def allowed(self) -> str:
        """The allowed values, in words, for error messages and help."""
        if self.choices:
            return f"one of {list(self.choices)}"
        if self.kind is bool:
            return "true or false"
        if self.kind is str:
            return "a non-empty string"
        noun = "an integer" if self.kind is int else "a number"
        if self.low is not None and self.high is not None:
            low = ("(" if self.low_open else "[") + self._bound(self.low)
            high = self._bound(self.high) + (")" if self.high_open else "]")
            text = f"{noun} in {low}, {high}"
        elif self.low is not None:
            text = f"{noun} {'>' if self.low_open else '>='} {self._bound(self.low)}"
        else:
            text = noun
        return text + (" or empty" if self.optional else "")

    def _bound(self, value: float) -> str:
        if value == INT64_MAX:
            return "2**63 - 1"
        return str(int(value)) if self.kind is int else f"{value:g}"


def check_int(name: str, value: Any, low: int, high: int = INT64_MAX) -> None:
    """Refuses ``value`` unless it is a whole number (an int, not a bool or a float) in
    ``[low, high]``, naming parameter ``name`` and the allowed values as a knob's are
    named. ``high`` defaults to what a run's record can store (`INT64_MAX`)."""
    whole = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if whole and low <= value <= high:
        return
    allowed = Knob(int, name, "", low=low, high=high).allowed()
    raise ValueError(f"{name}={value!r} must be {allowed}")


_RATIO = dict(low=0.0, high=1.0)
_COSINE_DISTANCE = dict(low=0.0, high=2.0)
_SIMILARITY = dict(low=0.0, high=1.0, low_open=True)

KNOBS: dict[str, Knob] = {
    # Targets (SPEC 2.4, 2.8)
    "eval_ratio": Knob(
        float,
        "Eval share",
        "Share of the kept samples held out for validation + test",
        low=0.0,
        high=1.0,
        low_open=True,
        high_open=True,
        advanced=False,
        reference=("dataset_splits", "eval_ratio"),
    ),
    "validation_ratio": Knob(
        float,
        "Validation share of eval",
        "Share of the held-out samples that go to validation (the rest is test)",
        **_RATIO,
        advanced=False,
        reference=("nested_shells", "validation_ratio"),
    ),
    "eval_tolerance": Knob(
        float,
        "Eval share tolerance",
        "Allowed overshoot of the eval share before a bubble is shrunk",
        **_RATIO,
        reference=("dataset_splits", "eval_tolerance"),
    ),
    "min_eval_per_batch": Knob(
        float,
        "Eval floor per round",
        "Share of every new round held out even when the quota is already met, up to "
        "eval_tolerance past the eval target (at most eval_ratio)",
        **_RATIO,
        reference=("dataset_splits", "min_eval_per_batch"),
    ),
    "shell_layout": Knob(
        str,
        "Shell layout",
        "Which shell of a bubble is validation: inner_val, inner_test, or a seeded coin "
        "per bubble (random), which the round's balance may turn over so that a label "
        "reaches both validation and test",
        choices=("random", "inner_val", "inner_test"),
        advanced=False,
        reference=("nested_shells", "shell_configuration"),
    ),
    # Deduplication (SPEC 2.2)
    "dedup_enabled": Knob(
        bool,
        "Remove near-duplicates",
        "Detect near-duplicates at all",
        frozen=True,
        reference=("deduplication", "enabled"),
    ),
    "dedup_threshold": Knob(
        float,
        "Duplicate similarity",
        "Cosine similarity at or above which a new sample is a duplicate of an earlier one",
        **_SIMILARITY,
        advanced=False,
        reference=("deduplication", "similarity_threshold"),
    ),
    "dedup_policy": Knob(
        str,
        "Duplicate policy",
        "exclude: marked split=duplicate, in no split; follow: takes its original's split",
        choices=("exclude", "follow"),
        advanced=False,
    ),
    "class_aware": Knob(
        bool,
        "Label-aware duplicates",
        "Near twins with different labels are not duplicates (needs a label field)",
        frozen=True,
        reference=("class_aware",),
    ),
    # Labels and groups (SPEC 2)
    "label_aware": Knob(
        bool,
        "Eval share per label",
        "With a label field, meet the eval quota per label too (rare labels first)",
    ),
    "min_label_count": Knob(
        int,
        "Smallest label pursued",
        "Labels with fewer kept samples are not pursued into eval",
        low=1,
    ),
    # Anchor placement (SPEC 2.5)
    "anchor_method": Knob(
        str,
        "Anchor proposals",
        "How bubble centres are proposed: quasi-random (qmc), random, kmeans",
        choices=("qmc", "random", "kmeans"),
        reference=("anchor_placement", "method"),
    ),
    "qmc_sequence": Knob(
        str,
        "Quasi-random sequence",
        "Sequence of qmc proposals",
        choices=("sobol", "halton"),
        reference=("anchor_placement", "qmc_sequence"),
    ),
    "snap_strategy": Knob(
        str,
        "Snapping",
        "Snap proposals to the nearest sample, or pick among k by 1/LID",
        choices=("nearest", "lid_weighted"),
        reference=("anchor_placement", "snap_strategy"),
    ),
    "lid_snap_k": Knob(
        int,
        "Snapping neighbours",
        "Neighbours considered by lid_weighted snapping",
        low=1,
        reference=("anchor_placement", "lid_snap_k"),
    ),
    "min_anchor_distance": Knob(
        float,
        "Least distance between centres",
        "Minimum cosine distance between bubble centres",
        **_COSINE_DISTANCE,
        reference=("anchor_placement", "min_anchor_distance"),
    ),
    "pca_dims": Knob(
        int, "Proposal dimensions", "Dimensions of the PCA space proposals are drawn in", low=1
    ),
    # Radius (SPEC 2.6)
    "radius_mode": Knob(
        str,
        "Radius rule",
        "adaptive (from local density) or fixed (the base radius)",
        choices=("adaptive", "fixed"),
        reference=("hypersphere", "radius_computation"),
    ),
    "adaptive_method": Knob(
        str,
        "Local scale",
        "Local scale used by adaptive radii",
        choices=("lid", "knn_distance"),
        reference=("hypersphere", "adaptive_method"),
    ),
    "base_radius": Knob(
        float,
        "Base radius",
        "Base bubble radius (cosine distance)",
        **_COSINE_DISTANCE,
        reference=("hypersphere", "base_radius_fixed"),
    ),
    "radius_scale_factor": Knob(
        float,
        "Radius scale",
        "Multiplier applied to every adaptive radius",
        low=0.0,
        low_open=True,
        reference=("hypersphere", "radius_scale_factor"),
    ),
    "min_radius": Knob(
        float,
        "Smallest radius",
        "Smallest bubble radius (cosine distance)",
        **_COSINE_DISTANCE,
        reference=("hypersphere", "min_radius"),
    ),
    "max_radius": Knob(
        float,
        "Largest radius",
        "Largest bubble radius (cosine distance)",
        **_COSINE_DISTANCE,
        reference=("hypersphere", "max_radius"),
    ),
    "lid_k": Knob(
        int, "LID neighbours", "Neighbours used to estimate local intrinsic dimension", low=3
    ),
    "bubble_size": Knob(
        int,
        "Samples per bubble",
        "Target samples per bubble (empty: from the radius rule)",
        low=2,
        optional=True,
    ),
    # Near twins (SPEC 2.7)
    "leak_threshold": Knob(
        float,
        "Leak similarity",
        "Two samples this similar (cosine) are near twins: never on both sides of the "
        "train/eval line",
        **_SIMILARITY,
        rises_only=True,
    ),
    "closure_threshold": Knob(
        float,
        "Capture similarity",
        "Bubbles take whole the groups of samples linked at this similarity (empty: "
        f"leak similarity - {CLOSURE_MARGIN}); at most the leak similarity. Lower (0.85) "
        "for data that will arrive in many rounds: coarser held-out regions, which later "
        "rounds rarely bridge; equal to it where no later round will come: finer regions, "
        "per-label shares nearer the target, but later rounds then leak",
        **_SIMILARITY,
        optional=True,
    ),
    "seed": Knob(
        int,
        "Seed",
        "Drives every random choice; same data + config + seed = same split",
        low=0,
        high=INT64_MAX,
        advanced=False,
        frozen=True,
        reference=("random_seed", "random_seed"),
    ),
    # Embedding (SPEC 2.1); used by the FiftyOne side, stored with the state.
    "model_name": Knob(
        str,
        "Model",
        "Hugging Face model name or local folder (CLIP ViT-B/32 by default)",
        advanced=False,
        frozen=True,
        reference=("foundation_models", "primary_model"),
    ),
    "batch_size": Knob(
        int,
        "Batch size",
        "Images per embedding batch",
        low=1,
        reference=("embedding", "batch_size"),
    ),
    "device": Knob(
        str,
        "Device",
        "Where the model runs: auto picks CUDA when present (one GPU of several: set "
        "CUDA_VISIBLE_DEVICES), mps on Apple silicon",
        choices=("auto", "cpu", "cuda", "mps"),
        reference=("embedding", "device"),
    ),
}

CHOICES: dict[str, tuple[str, ...]] = {n: k.choices for n, k in KNOBS.items() if k.choices}


def check_knob(name: str, value: Any) -> Any:
    """Checks one knob's value against `KNOBS` and returns it (ints as ints).

    Args:
        name: a key of `KNOBS`
        value: the value to check

    Raises:
        ValueError: naming the knob and the allowed values, or suggesting a knob name
    """
    if name not in KNOBS:
        raise ValueError(unknown_names_message([name], KNOBS, "BubbleFence parameter"))
    knob = KNOBS[name]
    if value is None and knob.optional:
        return None
    value = _plain(value)
    if _accepts(knob, value):
        return value
    raise ValueError(f"{name}={value!r} must be {knob.allowed()}")


def _plain(value: Any) -> Any:
    """A numpy scalar as the Python number or bool it holds (`np.int64(3)` -> 3): numpy
    hands them out (an array's element, a mean), the checks and the state's JSON take
    Python's. Other values as they are."""
    if isinstance(value, np.generic) and isinstance(value, (numbers.Number, np.bool_)):
        return value.item()
    return value


def _accepts(knob: Knob, value: Any) -> bool:
    if knob.kind is bool:
        return isinstance(value, bool)
    if knob.kind is str:
        return (
            isinstance(value, str) and bool(value) and (not knob.choices or value in knob.choices)
        )
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    if knob.kind is int and not (isinstance(value, int) and value <= INT64_MAX):
        return False
    if not math.isfinite(value):
        return False
    if knob.low is not None and (value <= knob.low if knob.low_open else value < knob.low):
        return False
    return knob.high is None or (value < knob.high if knob.high_open else value <= knob.high)


def parse_knob(name: str, text: Any) -> Any:
    """A knob's value from text (``--set``, a YAML scalar, a form), converted to its type.

    ``"false"``, ``"no"`` and ``"0"`` are False for a flag, ``""``/``"none"`` is None for
    an optional knob, choices are case-insensitive; the result is checked with
    `check_knob`.

    Args:
        name: a key of `KNOBS`
        text: the value as text, or already typed (then only checked)
    """
    if name not in KNOBS:
        raise ValueError(unknown_names_message([name], KNOBS, "BubbleFence parameter"))
    knob = KNOBS[name]
    value = text
    if isinstance(text, str):
        raw = text.strip()
        if knob.optional and raw.lower() in ("", "none", "null", "~"):
            value = None
        elif knob.kind is bool:
            value = _FLAG_WORDS.get(raw.lower(), text)
        elif knob.kind in (int, float):
            value = _number(raw, knob.kind, text)
        elif knob.choices:
            value = raw.lower()
    elif knob.kind is float and isinstance(text, int) and not isinstance(text, bool):
        value = float(text)
    return check_knob(name, value)


_FLAG_WORDS = {
    "true": True,
    "yes": True,
    "on": True,
    "1": True,
    "false": False,
    "no": False,
    "off": False,
    "0": False,
}


def _number(raw: str, kind: type, original: str) -> Any:
    try:
        return int(raw) if kind is int else float(raw)
    except ValueError:
        return original  # check_knob then names the knob and what it takes


def knob_help() -> str:
    """One line per knob, for the CLI's ``--set`` help: name, allowed values, default."""
    defaults = BubbleFenceConfig()

    def default(name: str) -> str:
        value = getattr(defaults, name)
        return "empty" if value is None else repr(value)  # as `--set KNOB=` writes it

    return "\n".join(
        f"  {name} ({knob.allowed()}; default {default(name)}): {knob.help}"
        for name, knob in KNOBS.items()
    )


def unknown_names_message(names: list[str], known: Any, what: str) -> str:
    """``unknown <what> 'x' (did you mean 'y'?)`` for each name, then the known ones."""
    parts = []
    for name in names:
        close = difflib.get_close_matches(str(name), list(known), n=1, cutoff=0.6)
        parts.append(f"{name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    plural = what + ("es" if what.endswith("s") else "s")  # "classes", not "classs"
    return f"unknown {plural if len(names) > 1 else what} " + ", ".join(parts)


def frozen_message(names: list[str]) -> str:
    """Why the knobs `frozen_changes` named are refused, for the refusal's message."""
    rising = [n for n in names if KNOBS[n].rises_only]
    why = "earlier samples were split with the stored value"
    if rising:
        why += (
            f" ({', '.join(rising)} may rise but not fall: lower, pairs of earlier samples "
            "between the two values, which earlier rounds put on both sides, would be "
            "near twins across the line)"
        )
    return why


def frozen_changes(previous: BubbleFenceConfig, new: BubbleFenceConfig) -> list[str]:
    """The knobs whose change a state with samples refuses: frozen ones changed,
    `rises_only` ones lowered (empty: the change is allowed).

    Args:
        previous: the config earlier rounds ran with
        new: the config asked for now
    """
    return [n for n, k in KNOBS.items() if k.refuses(getattr(previous, n), getattr(new, n))]


@dataclass(frozen=True)
class BubbleFenceConfig:
    """Parameters of a BubbleFence split. Distances and radii are cosine distances."""

    # Targets (SPEC 2.4, 2.8)
    eval_ratio: float = 0.2
    validation_ratio: float = 0.5
    eval_tolerance: float = 0.03
    min_eval_per_batch: float = 0.05
    shell_layout: str = "random"
    # Deduplication (SPEC 2.2)
    dedup_enabled: bool = True
    dedup_threshold: float = 0.9999
    dedup_policy: str = "exclude"
    class_aware: bool = False
    # Labels and groups (SPEC 2): with labels, meet the quota per label too, for the
    # labels with at least `min_label_count` kept samples.
    label_aware: bool = True
    min_label_count: int = 20
    # Anchor placement (SPEC 2.5)
    anchor_method: str = "qmc"
    qmc_sequence: str = "sobol"
    snap_strategy: str = "lid_weighted"
    lid_snap_k: int = 5
    min_anchor_distance: float = 0.1
    pca_dims: int = 8
    # Radius (SPEC 2.6)
    radius_mode: str = "adaptive"
    adaptive_method: str = "lid"
    base_radius: float = 0.05
    radius_scale_factor: float = 1.0
    min_radius: float = 0.01
    max_radius: float = 0.5
    lid_k: int = 20
    bubble_size: int | None = None
    # Boundary rule (SPEC 2.7): no pair this similar is cut by a bubble's edge.
    leak_threshold: float = 0.95
    # The units bubbles capture are the components of pairs at least this similar (None:
    # leak_threshold - CLOSURE_MARGIN). Below leak_threshold, held-out units are separated
    # from train by a margin that later samples rarely bridge: a new sample is a twin of
    # both sides only where they come within twice the twin angle.
    closure_threshold: float | None = None
    seed: int = 42
    # Embedding (SPEC 2.1); used by the FiftyOne side, stored with the state.
    model_name: str = "openai/clip-vit-base-patch32"
    batch_size: int = 64
    device: str = "auto"

    def __post_init__(self) -> None:
        for name in KNOBS:
            # Frozen: the checked value (a numpy scalar made Python's) is set past it.
            object.__setattr__(self, name, check_knob(name, getattr(self, name)))
        if self.closure_threshold is not None and self.closure_threshold > self.leak_threshold:
            raise ValueError(
                f"closure_threshold={self.closure_threshold} must be at most "
                f"leak_threshold={self.leak_threshold}"
            )
        if (
            self.dedup_enabled
            and self.dedup_policy == "follow"
            and self.dedup_threshold < self.leak_threshold
        ):
            # A duplicate that follows its original would bring its own near twins,
            # not all of them the original's, across the line, counted nowhere.
            raise ValueError(
                f"dedup_policy='follow' needs dedup_threshold >= leak_threshold (got "
                f"{self.dedup_threshold} < {self.leak_threshold}): a duplicate takes its "
                "original's split, and one less similar to it than near twins are has near "
                "twins of its own that may sit across the line, uncounted; raise "
                "dedup_threshold, or keep dedup_policy='exclude'"
            )
        if not self.min_radius < self.max_radius:
            raise ValueError(
                f"min_radius={self.min_radius} must be smaller than max_radius={self.max_radius}"
            )

    # -- conversions ---------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> BubbleFenceConfig:
        """Build from flat knob names; an unknown name is an error that suggests the closest.

        Args:
            values: knob name -> value
        """
        unknown = sorted(set(values) - set(KNOBS))
        if unknown:
            raise ValueError(unknown_names_message(unknown, KNOBS, "BubbleFence parameter"))
        return cls(**values)

    @classmethod
    def from_yaml(cls, path: str | Path) -> BubbleFenceConfig:
        """Read a YAML file in our flat layout or the original BubbleFence's nested one.

        Args:
            path: the YAML file (see `read_yaml_values`)
        """
        return cls.from_dict(read_yaml_values(path))

    @property
    def unit_threshold(self) -> float:
        """The similarity whose components bubbles capture whole (see closure_threshold)."""
        if self.closure_threshold is not None:
            return self.closure_threshold
        return max(self.leak_threshold - CLOSURE_MARGIN, 0.0)

    def replace(self, **changes: Any) -> BubbleFenceConfig:
        return dataclasses.replace(self, **changes)


def _naming_unknown_knobs(generated_init: Any) -> Any:
    """The dataclass's ``__init__``, but a misspelt keyword is named with the closest
    knob, as `from_dict` and the YAML reader name it, rather than Python's bare
    "unexpected keyword argument" (``BubbleFenceConfig(eval_ratoi=0.3)``, `replace`)."""

    @functools.wraps(generated_init)
    def __init__(self: BubbleFenceConfig, *args: Any, **kwargs: Any) -> None:
        unknown = sorted(set(kwargs) - set(KNOBS))
        if unknown:
            raise TypeError(unknown_names_message(unknown, KNOBS, "BubbleFence parameter"))
        generated_init(self, *args, **kwargs)

    return __init__


BubbleFenceConfig.__init__ = _naming_unknown_knobs(BubbleFenceConfig.__init__)


# -- the original BubbleFence's nested YAML --------------------------------------

_REFERENCE_NAMES = {k.reference: name for name, k in KNOBS.items() if k.reference}

# Reference keys whose value we accept only when it matches what we do.
_REFERENCE_FIXED: dict[tuple[str, ...], Any] = {
    ("deduplication", "method"): "cosine",
    ("distance", "metric"): "cosine",
    ("nested_shells", "enabled"): True,
    ("embedding", "normalize_embeddings"): True,
}

# Sections and keys of the original that this plugin does not implement: read, reported
# as ignored, never silently dropped (shared/reference-config.md).
_REFERENCE_UNSUPPORTED_SECTIONS = (
    "preprocessing",
    "density_transformation",
    "streaming",
    "visualization",
)
_REFERENCE_UNSUPPORTED = {
    ("foundation_models", "multi_encoder_enabled"),
    ("foundation_models", "additional_models"),
    ("foundation_models", "consensus_method"),
    ("foundation_models", "consensus_threshold"),
    ("embedding", "io_workers"),
    ("hypersphere", "base_radius_mode"),
    ("hypersphere", "base_radius_percentile"),
    ("hypersphere", "base_radius_scale"),
    ("hypersphere", "buffer_zones"),
}


class _UniqueKeyLoader(yaml.SafeLoader):
    """`yaml.safe_load`'s loader, refusing a key given twice in one mapping: YAML keeps
    the last silently, and a config that names eval_ratio twice ran at the second."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} is given twice", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def read_yaml_values(path: str | Path) -> dict[str, Any]:
    """The knobs a YAML config file names, by our flat names, in either layout.

    Only the named knobs: a caller that continues a stored config changes just these.
    Keys of the original's layout that we do not support are reported in one warning;
    any other unknown key is an error that suggests the closest known key (see
    `translate_reference_layout`).

    Args:
        path: the YAML file
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise ValueError(f"cannot read the config file {str(path)!r}: {e.strerror or e}") from e
    except UnicodeDecodeError as e:
        raise ValueError(
            f"{path}: not a text (UTF-8) file, so not a YAML config (byte {e.start}: {e.reason})"
        ) from e
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader) or {}
    except yaml.MarkedYAMLError as e:  # syntax errors, tags safe_load refuses, repeated keys
        # Its own text names the stream "<unicode string>" and quotes the line: the file
        # and the line number say it in one line.
        mark = e.problem_mark or e.context_mark
        where = f"{path}, line {mark.line + 1}" if mark else str(path)
        raise ValueError(f"{where}: not a valid YAML config: {e.problem or e.context}") from e
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not a valid YAML config: {e}") from e
    if not isinstance(data, dict):
        raise ValueError(f"{path}: the top level of a config must be a mapping")
    values, ignored = translate_reference_layout(data)
    if ignored:
        warnings.warn(
            f"{path}: ignoring keys of the original BubbleFence that this plugin does "
            f"not support: {sorted(ignored)}",
            UserWarning,
            stacklevel=3,
        )
    return values


def translate_reference_layout(data: dict[str, Any]) -> tuple[dict[str, Any], set[str]]:
    """Flatten the reference's nested layout into our names, converting each value.

    Returns the flat values and the dotted keys of the original that were ignored. Our
    own flat names pass through, so one file may mix both layouts. A key that is neither
    ours nor the original's is an error that suggests the closest known key.

    Args:
        data: the parsed YAML mapping
    """
    values: dict[str, Any] = {}
    given_as: dict[str, str] = {}  # knob -> the key that set it
    ignored: set[str] = set()
    unknown: list[str] = []
    train_ratio = None
    for path, value in _walk(data):
        dotted = ".".join(path)
        name = _REFERENCE_NAMES.get(path) or (path[0] if len(path) == 1 else None)
        if name in KNOBS:
            if name in given_as:  # one under each layout: which one counts would be a guess
                raise ValueError(f"{given_as[name]} and {dotted} both set {name}; give one of them")
            given_as[name] = dotted
            try:
                values[name] = parse_knob(name, value)
            except ValueError as e:
                raise ValueError(f"{dotted}: {e}") from e
        elif path in _REFERENCE_FIXED:
            expected = _REFERENCE_FIXED[path]
            if value != expected:
                raise ValueError(f"{dotted}={value!r} is not supported; only {expected!r} is")
        elif path == ("dataset_splits", "train_ratio"):
            train_ratio = _train_ratio(dotted, value)
        elif path[0] in _REFERENCE_UNSUPPORTED_SECTIONS or path[:2] in _REFERENCE_UNSUPPORTED:
            ignored.add(dotted)
        else:
            unknown.append(dotted)
    if unknown:
        known = [*KNOBS, *(".".join(p) for p in (*_REFERENCE_NAMES, *_REFERENCE_FIXED))]
        raise ValueError(unknown_names_message(unknown, known, "config key"))
    if train_ratio is not None:
        # The original's train share is 1 - eval_ratio: redundant, so it must agree.
        implied = round(1.0 - train_ratio, 12)
        if "eval_ratio" in values and not math.isclose(values["eval_ratio"], implied):
            raise ValueError(
                f"dataset_splits.train_ratio={train_ratio} and eval_ratio="
                f"{values['eval_ratio']} disagree: train is 1 - eval_ratio; give one of them"
            )
        values["eval_ratio"] = implied
    return values, ignored


def _train_ratio(dotted: str, value: Any) -> float:
    """The original's ``dataset_splits.train_ratio``, checked under its own name."""
    try:
        ratio = float(value)
    except (TypeError, ValueError):
        ratio = math.nan
    if not 0.0 < ratio < 1.0:  # also refuses NaN
        raise ValueError(f"{dotted}={value!r} must be a number in (0, 1) (eval is the rest)")
    return ratio


def _walk(data: dict[str, Any], prefix: tuple[str, ...] = ()):
    for key, value in data.items():
        path = (*prefix, str(key))
        if isinstance(value, dict) and path not in _REFERENCE_NAMES:
            yield from _walk(value, path)
        else:
            yield path, value
