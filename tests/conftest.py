"""Test session set-up: a throwaway FiftyOne database and plugins directory.

FiftyOne reads its configuration when it is first imported, so the environment is set
here, at conftest import, before any test module can import it. Tests that never
import fiftyone pay nothing: mongod starts only on the first database access.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
_TMP = Path(tempfile.mkdtemp(prefix="bubblefence-tests-"))
(_TMP / "plugins").mkdir()
# The repo root is the plugin; a symlink lets FiftyOne's loader find it without
# walking into the repo's other folders.
(_TMP / "plugins" / "bubblefence").symlink_to(ROOT, target_is_directory=True)

os.environ["FIFTYONE_DATABASE_DIR"] = str(_TMP / "db")
os.environ["FIFTYONE_PLUGINS_DIR"] = str(_TMP / "plugins")
os.environ["FIFTYONE_DEFAULT_DATASET_DIR"] = str(_TMP / "datasets")
os.environ["FIFTYONE_DO_NOT_TRACK"] = "true"
os.environ.setdefault("FIFTYONE_DATABASE_VALIDATION", "false")
os.environ.setdefault("FIFTYONE_SHOW_PROGRESS_BARS", "false")
os.environ.pop("FIFTYONE_DATABASE_URI", None)  # never touch a real database
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _cleanup() -> None:
    # Registered before fiftyone is imported, so it runs after fiftyone's own exit
    # handlers have stopped mongod (atexit runs handlers last-in, first-out).
    shutil.rmtree(_TMP, ignore_errors=True)


atexit.register(_cleanup)

TINY_DIM = 16
IMAGE_SIZE = 32


def save_tiny_clip(folder: Path, layers: int = 1) -> str:
    """A randomly initialised, tiny CLIP saved like a real one: loads offline in ~1 s."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    torch.manual_seed(1234)
    config = CLIPConfig(
        text_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=layers,
            num_attention_heads=2,
            vocab_size=100,
            max_position_embeddings=16,
        ),
        vision_config=dict(
            image_size=IMAGE_SIZE,
            patch_size=8,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=layers,
            num_attention_heads=2,
        ),
        projection_dim=TINY_DIM,
    )
    CLIPModel(config).save_pretrained(folder)
    CLIPImageProcessor(
        size={"shortest_edge": IMAGE_SIZE},
        crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
    ).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return save_tiny_clip(tmp_path_factory.mktemp("tiny_clip"))


def write_images(folder: Path, n: int, seed: int = 0, prefix: str = "img") -> list[str]:
    """``n`` 32x32 RGB images in a few colour families, so embeddings form clusters."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    bases = rng.integers(0, 256, size=(8, 3))
    paths = []
    for i in range(n):
        base = bases[i % len(bases)]
        noise = rng.integers(-40, 41, size=(IMAGE_SIZE, IMAGE_SIZE, 3))
        pixels = np.clip(base + noise, 0, 255).astype(np.uint8)
        path = folder / f"{prefix}_{i:04d}.png"
        Image.fromarray(pixels).save(path)
        paths.append(str(path))
    return paths


@pytest.fixture
def image_factory(tmp_path: Path) -> Callable[..., list[str]]:
    counter = iter(range(1000))

    def make(n: int, seed: int = 0, subdir: str | None = None) -> list[str]:
        name = subdir or f"batch{next(counter)}"
        return write_images(tmp_path / name, n, seed=seed, prefix=name)

    return make


def clustered_embeddings(n: int, dim: int = TINY_DIM, seed: int = 0) -> np.ndarray:
    """Unit vectors around 10 centres: what a real image model gives, in miniature."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((10, dim))
    x = centres[rng.integers(0, 10, n)] + 0.25 * rng.standard_normal((n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def operator_form(dataset, uri: str, params: dict | None = None) -> dict:
    """The properties of an operator's form as the App resolves it for ``params``."""
    import asyncio

    from fiftyone.operators.executor import resolve_type
    from fiftyone.operators.registry import OperatorRegistry

    request = {
        "dataset_name": dataset.name,
        "operator_uri": uri,
        "params": params or {},
        "view": [],
        "target": "inputs",
    }
    result = asyncio.run(resolve_type(OperatorRegistry(), uri, request))
    return result.to_json()["type"]["properties"]


def operator_requests(result) -> dict[str, list]:
    """Params of the operators a FiftyOne execution result asked the App to trigger."""
    out: dict[str, list] = {}
    for r in result.executor.to_json()["requests"]:
        out.setdefault(r["operator_uri"], []).append(r["params"])
    return out


@pytest.fixture
def fo_datasets() -> Iterator[list]:
    """Collects datasets a test creates and deletes them afterwards."""
    made: list = []
    yield made
    for ds in made:
        try:
            if not ds.deleted:
                ds.delete()
        except Exception:
            pass


@pytest.fixture
def field_dataset(fo_datasets: list) -> object:
    """200 samples with a precomputed 16-d embeddings field ``emb`` (no images needed)."""
    import fiftyone as fo

    ds = fo.Dataset()
    fo_datasets.append(ds)
    ds.add_samples([fo.Sample(filepath=f"/nonexistent/{i}.png") for i in range(200)])
    ds.set_values("emb", list(clustered_embeddings(200)))
    return ds


PANEL_URI = "@bubblefence/bubblefence/bubblefence_panel"


def panel_module() -> object:
    """The panel's module as FiftyOne's executor loaded it (the plugin's own copy)."""
    import sys

    from fiftyone.operators.registry import OperatorRegistry

    return sys.modules[type(OperatorRegistry().get_operator(PANEL_URI)).__module__]


@pytest.fixture
def new_panel(monkeypatch: pytest.MonkeyPatch) -> object:
    """A panel opened anew: the server keeps no record of it from an earlier test."""
    module = panel_module()
    monkeypatch.setattr(module, "_SHOWN", {})
    monkeypatch.setattr(module, "_CLICKED_POINTS", {})
    return module


def unit(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length, float32 (the core's embedding rows)."""
    x = np.asarray(x, dtype=np.float64)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture
def media_dataset(field_dataset: object, tmp_path: Path) -> object:
    """field_dataset with real 8x8 images (exports copy media), split once."""
    from PIL import Image

    import bubblefence_plugin.fo as bfo

    ds = field_dataset
    paths = []
    for i in range(len(ds)):
        p = tmp_path / "media" / f"{i}.png"
        p.parent.mkdir(exist_ok=True)
        Image.new("RGB", (8, 8), (i % 256, 0, 0)).save(p)
        paths.append(str(p))
    ds.set_values("filepath", paths)
    bfo.split(ds, embeddings_field="emb")
    return ds


def splits_by_id(ds) -> dict[str, str]:
    """Each sample's ``split`` field, by id."""
    ids, splits = ds.values(["id", "split"])
    return dict(zip(ids, splits, strict=True))


def killed(*args, **kwargs) -> None:
    """Stands in for a step a test kills the run at (monkeypatched over it)."""
    raise KeyboardInterrupt("killed")


def split_stopped_at(ds, step: str, monkeypatch) -> None:
    """A split of ``ds`` killed at ``step``, a function of `bubblefence_plugin.fo.split`
    (e.g. ``_write_round_fields``: after the commit, before the tags)."""
    import importlib

    import pytest

    import bubblefence_plugin.fo as bfo

    monkeypatch.setattr(importlib.import_module("bubblefence_plugin.fo.split"), step, killed)
    with pytest.raises(KeyboardInterrupt):
        bfo.split(ds)
    monkeypatch.undo()


def add_embedded_samples(ds, n: int, seed: int) -> None:
    """Adds ``n`` samples with an ``emb`` vector, as `field_dataset` has."""
    import fiftyone as fo

    start = len(ds)
    ds.add_samples([fo.Sample(filepath=f"/nonexistent/{seed}_{start + i}.png") for i in range(n)])
    new = ds.exists("emb", False)
    new.set_values("emb", list(clustered_embeddings(len(new), seed=seed)))


def crossing_pairs(bf, threshold=0.95):
    """Brute force: pairs of kept samples at >= threshold on both sides of the train/eval
    line, or of validation/test."""
    a = bf.assignments()
    kept = a["duplicate_of"].isna().to_numpy()
    # In float64, as the split decides: a float32 product put a digits pair at 0.79999998
    # on the other side of 0.8 (one pair of 41,652).
    x = bf._embeddings[kept].astype(np.float64)
    split = a["split"].to_numpy()[kept]
    i, j = np.nonzero(np.triu(x @ x.T >= threshold, 1))
    train_i, train_j = split[i] == "train", split[j] == "train"
    return int(np.sum(train_i != train_j) + np.sum(~train_i & ~train_j & (split[i] != split[j])))


def check_invariants(bf):
    """The leak graph decides membership: every pair at the leak threshold that crosses
    train/eval or validation/test was cut and counted; bubbles own their eval samples."""
    from bubblefence_plugin.core.bubbles import INNER_VAL

    threshold = bf.config.leak_threshold
    counted = sum(r["cut_pairs"] for r in bf.history)
    assert crossing_pairs(bf, threshold) == counted
    a = bf.assignments()
    kept = a["duplicate_of"].isna().to_numpy()
    held = a["split"].isin(["validation", "test"]).to_numpy() & kept
    anchor = a["anchor_id"].to_numpy()
    assert (anchor[held] >= 0).all() and (anchor[~held & kept] == -1).all()
    shell = a["shell"].to_numpy()[held]
    val_inner = bf._anchors.layout[anchor[held]] == INNER_VAL
    expected = np.where((shell == "inner") == val_inner, "validation", "test")
    assert (a["split"].to_numpy()[held] == expected).all()
    # No train sample lies inside the ball of a bubble of its round or a later one:
    # later rounds hold out what falls inside (bubbles.clear_of_train).
    train = np.flatnonzero(kept & (a["split"] == "train").to_numpy())
    table = bf._anchors
    x = bf._embeddings[: len(a)].astype(np.float64)
    distance = 1.0 - x[train] @ table.centres.astype(np.float64).T
    same_or_later = a["round"].to_numpy()[train][:, None] <= table.round[None, :]
    assert not ((distance < table.radius - 1e-5) & same_or_later).any()
