"""Every knob of the algorithm, validated up front (SPEC 2), and the YAML loader.

`BubbleFenceConfig.from_yaml` reads our flat layout and the nested layout of the
original BubbleFence (`shared/reference-config.md`). Keys we do not support are
reported once as ignored through a warning, never silently dropped.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml

CHOICES: dict[str, tuple[str, ...]] = {
    "shell_layout": ("random", "inner_val", "inner_test"),
    "dedup_policy": ("exclude", "follow"),
    "anchor_method": ("qmc", "random", "kmeans"),
    "qmc_sequence": ("sobol", "halton"),
    "snap_strategy": ("nearest", "lid_weighted"),
    "radius_mode": ("adaptive", "fixed"),
    "adaptive_method": ("lid", "knn_distance"),
    "device": ("auto", "cpu", "cuda"),
}

# Integers go into MongoDB run documents, which hold signed 64-bit integers (numpy's
# generators take any such seed).
INT64_MAX = 2**63 - 1

# Default gap between leak_threshold and closure_threshold. Measured on the mixture of
# bench/bench_quality.py in 3 rounds (leak@0.95 after the last round / labels in eval):
# margin 0: 0.039 / 47; 0.02: 0.012 / 48; 0.05: 0.008 / 44 of 50.
CLOSURE_MARGIN = 0.02

# Knobs that change the meaning of assignments already made: they are frozen once
# a state holds samples (see `BubbleFence.reconfigure`).
FROZEN_AFTER_FIRST_ROUND = ("seed", "model_name", "dedup_enabled", "class_aware")


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
        _check_ratio("eval_ratio", self.eval_ratio, low_open=True, high_open=True)
        _check_ratio("validation_ratio", self.validation_ratio)
        _check_ratio("eval_tolerance", self.eval_tolerance)
        _check_ratio("min_eval_per_batch", self.min_eval_per_batch)
        _check_ratio("dedup_threshold", self.dedup_threshold, low_open=True)
        _check_ratio("leak_threshold", self.leak_threshold, low_open=True)
        if self.closure_threshold is not None:
            _check_ratio("closure_threshold", self.closure_threshold, low_open=True)
            if self.closure_threshold > self.leak_threshold:
                raise ValueError(
                    f"closure_threshold={self.closure_threshold} must be at most "
                    f"leak_threshold={self.leak_threshold}"
                )
        for name, allowed in CHOICES.items():
            value = getattr(self, name)
            if value not in allowed:
                raise ValueError(f"{name}={value!r} is not one of {list(allowed)}")
        for name in ("lid_snap_k", "pca_dims", "batch_size"):
            _check_int(name, getattr(self, name), minimum=1)
        _check_int("lid_k", self.lid_k, minimum=3)
        _check_int("seed", self.seed, minimum=0)
        _check_int("min_label_count", self.min_label_count, minimum=1)
        if self.bubble_size is not None:
            _check_int("bubble_size", self.bubble_size, minimum=2)
        for name in ("min_anchor_distance", "base_radius", "min_radius", "max_radius"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and 0 <= value <= 2):
                raise ValueError(f"{name}={value!r} must be a cosine distance in [0, 2]")
        if not self.min_radius < self.max_radius:
            raise ValueError(
                f"min_radius={self.min_radius} must be smaller than max_radius={self.max_radius}"
            )
        if not (
            isinstance(self.radius_scale_factor, (int, float)) and self.radius_scale_factor > 0
        ):
            raise ValueError(f"radius_scale_factor={self.radius_scale_factor!r} must be > 0")
        for name in ("dedup_enabled", "class_aware", "label_aware"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name}={getattr(self, name)!r} must be true or false")
        if not isinstance(self.model_name, str) or not self.model_name:
            raise ValueError("model_name must be a non-empty string")

    # -- conversions ---------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> BubbleFenceConfig:
        """Build from flat parameter names; unknown names are an error."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown BubbleFenceConfig parameters: {unknown}")
        return cls(**values)

    @classmethod
    def from_yaml(cls, path: str | Path) -> BubbleFenceConfig:
        """Read a YAML file in our flat layout or the original BubbleFence's nested one."""
        return cls.from_dict(read_yaml_values(path))

    @property
    def unit_threshold(self) -> float:
        """The similarity whose components bubbles capture whole (see closure_threshold)."""
        if self.closure_threshold is not None:
            return self.closure_threshold
        return max(self.leak_threshold - CLOSURE_MARGIN, 0.0)

    def replace(self, **changes: Any) -> BubbleFenceConfig:
        return dataclasses.replace(self, **changes)


def _check_ratio(name: str, value: Any, *, low_open: bool = False, high_open: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        ok = (value > 0 if low_open else value >= 0) and (value < 1 if high_open else value <= 1)
    if not ok:
        low = "(0" if low_open else "[0"
        high = "1)" if high_open else "1]"
        raise ValueError(f"{name}={value!r} must be a number in {low}, {high}")


def _check_int(name: str, value: Any, *, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name}={value!r} must be an integer >= {minimum}")
    if value > INT64_MAX:
        raise ValueError(f"{name}={value!r} must be an integer in [{minimum}, 2**63 - 1]")


# -- the original BubbleFence's nested YAML --------------------------------------

# (section, key) of the reference layout -> (our name, converter)
_REFERENCE_KEYS: dict[tuple[str, ...], tuple[str, Any]] = {
    ("class_aware",): ("class_aware", bool),
    ("foundation_models", "primary_model"): ("model_name", str),
    ("embedding", "device"): ("device", str),
    ("embedding", "batch_size"): ("batch_size", int),
    ("deduplication", "enabled"): ("dedup_enabled", bool),
    ("deduplication", "similarity_threshold"): ("dedup_threshold", float),
    ("anchor_placement", "method"): ("anchor_method", str.lower),
    ("anchor_placement", "qmc_sequence"): ("qmc_sequence", str.lower),
    ("anchor_placement", "min_anchor_distance"): ("min_anchor_distance", float),
    ("anchor_placement", "snap_strategy"): ("snap_strategy", str.lower),
    ("anchor_placement", "lid_snap_k"): ("lid_snap_k", int),
    ("hypersphere", "radius_computation"): ("radius_mode", str.lower),
    ("hypersphere", "adaptive_method"): ("adaptive_method", str.lower),
    ("hypersphere", "base_radius_fixed"): ("base_radius", float),
    ("hypersphere", "radius_scale_factor"): ("radius_scale_factor", float),
    ("hypersphere", "min_radius"): ("min_radius", float),
    ("hypersphere", "max_radius"): ("max_radius", float),
    ("nested_shells", "validation_ratio"): ("validation_ratio", float),
    ("nested_shells", "shell_configuration"): ("shell_layout", str.lower),
    ("dataset_splits", "eval_ratio"): ("eval_ratio", float),
    ("dataset_splits", "min_eval_per_batch"): ("min_eval_per_batch", float),
    ("dataset_splits", "eval_tolerance"): ("eval_tolerance", float),
    ("random_seed", "random_seed"): ("seed", int),
}

# Reference keys whose value we accept only when it matches what we do.
_REFERENCE_FIXED: dict[tuple[str, ...], Any] = {
    ("deduplication", "method"): "cosine",
    ("distance", "metric"): "cosine",
    ("nested_shells", "enabled"): True,
    ("embedding", "normalize_embeddings"): True,
}


def read_yaml_values(path: str | Path) -> dict[str, Any]:
    """The knobs a YAML config file names, by our flat names (either layout; see
    `translate_reference_layout`); unsupported keys are reported through a warning.

    Only the named knobs: a caller that continues a stored config changes just these.
    """
    text = Path(path).read_text(encoding="utf-8")
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:  # syntax errors and tags safe_load refuses
        raise ValueError(f"{path}: not a valid YAML config: {e}") from e
    if not isinstance(data, dict):
        raise ValueError(f"{path}: the top level of a config must be a mapping")
    values, ignored = translate_reference_layout(data)
    if ignored:
        warnings.warn(
            f"{path}: ignoring unsupported config keys {sorted(ignored)}",
            UserWarning,
            stacklevel=3,
        )
    return values


def translate_reference_layout(data: dict[str, Any]) -> tuple[dict[str, Any], set[str]]:
    """Flatten the reference's nested layout into our names.

    Returns the flat values and the dotted keys that were ignored. Our own flat
    names pass through unchanged, so one file may mix both layouts.
    """
    ours = {f.name for f in fields(BubbleFenceConfig)}
    values: dict[str, Any] = {}
    ignored: set[str] = set()
    for path, value in _walk(data):
        dotted = ".".join(path)
        if path in _REFERENCE_KEYS:
            name, convert = _REFERENCE_KEYS[path]
            try:
                values[name] = convert(value)
            except (TypeError, ValueError) as e:
                raise ValueError(f"{dotted}={value!r} is not valid for {name}: {e}") from e
        elif len(path) == 1 and path[0] in ours:
            values[path[0]] = value
        elif path in _REFERENCE_FIXED:
            expected = _REFERENCE_FIXED[path]
            if value != expected:
                raise ValueError(f"{dotted}={value!r} is not supported; only {expected!r} is")
        elif path == ("dataset_splits", "train_ratio"):
            # Redundant with eval_ratio; used only when eval_ratio is absent.
            values.setdefault("eval_ratio", round(1.0 - float(value), 12))
        else:
            ignored.add(dotted)
    return values, ignored


def _walk(data: dict[str, Any], prefix: tuple[str, ...] = ()):
    for key, value in data.items():
        path = (*prefix, str(key))
        if isinstance(value, dict) and path not in _REFERENCE_KEYS:
            yield from _walk(value, path)
        else:
            yield path, value
