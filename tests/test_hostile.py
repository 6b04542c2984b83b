"""Hostile input and unlucky users (issue 12): each case the probe found, replayed through
Python, the command line and the operator executor, so that none of them comes back.

Export stays inside its folder; crafted or damaged states are refused with one message
before anything is allocated or loaded; the manifest is written from the state and
cannot carry spreadsheet formulas; the HTML report stays in its folder; user strings are
escaped in Markdown; the CLI answers every expected error with one line and exit code 2
before it writes anything; one-pixel-high images embed.
"""

from __future__ import annotations

import csv
import io
import json
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import clustered_embeddings, operator_requests

pytestmark = pytest.mark.fiftyone

fo = pytest.importorskip("fiftyone")
foo = pytest.importorskip("fiftyone.operators")
bfo = pytest.importorskip("bubblefence_plugin.fo")
cli = pytest.importorskip("bubblefence_plugin.cli")

from fiftyone.operators.executor import ExecutionError  # noqa: E402

from bubblefence_plugin import BubbleFence, BubbleFenceConfig  # noqa: E402
from bubblefence_plugin.core.state import StateDamagedError  # noqa: E402
from bubblefence_plugin.fo import runs  # noqa: E402
from bubblefence_plugin.fo.export import safe_csv_cell  # noqa: E402
from bubblefence_plugin.text import escape_markdown  # noqa: E402

PLUGIN = "@bubblefence/bubblefence"
SPLIT = f"{PLUGIN}/bubblefence_split"
EXPORT = f"{PLUGIN}/bubblefence_export"
RESET = f"{PLUGIN}/bubblefence_reset"
LINK_LABEL = "[docs](https://evil.example/)"


@pytest.fixture
def dataset_name(request):
    name = f"bf-hostile-{request.node.name}"[:60]
    yield name
    if fo.dataset_exists(name):
        fo.delete_dataset(name)


def _victim(tmp_path: Path) -> Path:
    """A file beside the export folder that an escaping export would replace."""
    victim = tmp_path / "victim" / "photo.png"
    victim.parent.mkdir()
    victim.write_bytes(b"precious")
    return victim


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


# --------------------------------------------------------------------------- 1. export


def test_export_names_become_safe_folders_inside_export_dir(media_dataset, tmp_path):
    ds = media_dataset
    victim = _victim(tmp_path)
    absolute = tmp_path / "abs_tag"
    ds.limit(5).tag_samples("../../victim")
    ds.skip(5).limit(3).tag_samples(str(absolute))
    out = tmp_path / "deep" / "out"
    before = _files(tmp_path)

    result = bfo.export(ds, out, "ImageDirectory", tags=["../../victim", str(absolute)])

    assert victim.read_bytes() == b"precious"
    assert not absolute.exists()
    assert result["folders"] == {
        "../../victim": "victim",
        str(absolute): bfo.safe_name(str(absolute), "tag"),
    }
    new = _files(tmp_path) - before
    assert new and all(p.startswith("deep/out/") for p in new), new
    assert len(list((out / "victim").iterdir())) == 5
    rows = _read_manifest(out / "manifest.csv")
    assert len(rows) == 8
    mapping = [json.loads(r["export_folders"]) for r in rows]
    assert {"../../victim": "victim"} in mapping


def test_export_folder_names_are_unique_and_never_the_manifest():
    folders = bfo.export_folders(["a/b", "a_b", "A_B", "..", ".", "manifest.csv", "train"])
    assert folders["train"] == "train"
    assert folders[".."] == "tag" and folders["."] == "tag_2"
    assert folders["manifest.csv"] not in ("manifest.csv", "manifest.CSV")
    assert len({f.lower() for f in folders.values()}) == len(folders)
    assert all("/" not in f and not f.startswith(".") for f in folders.values())


def test_export_refuses_paths_outside_before_writing(media_dataset, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="data_path"):
        bfo.export(media_dataset, out, "ImageDirectory", data_path=str(tmp_path / "elsewhere"))
    with pytest.raises(ValueError, match="labels_path"):
        bfo.export(media_dataset, out, "FiftyOneImageClassificationDataset", labels_path="../x")
    assert not out.exists() and not (tmp_path / "elsewhere").exists()
    # One tag as a plain string is that tag, not its letters.
    result = bfo.export(media_dataset, out, "ImageDirectory", tags="train")
    assert list(result["counts"]) == ["train"]


def test_export_operator_and_cli_keep_names_inside(media_dataset, tmp_path, capsys):
    ds = media_dataset
    victim = _victim(tmp_path)
    ds.limit(4).tag_samples("../../victim")

    out = tmp_path / "op_out"
    result = foo.get_operator(EXPORT)(
        ds, str(out), dataset_type="ImageDirectory", names=["../../victim"]
    )
    shown = operator_requests(result)["show_output"][0]["results"]["result"]
    assert shown["folders"] == {"../../victim": "victim"}
    assert len(list((out / "victim").iterdir())) == 4

    out = tmp_path / "cli_out"
    args = ["export", "--dataset", ds.name, "--dir", str(out), "--format", "ImageDirectory"]
    assert cli.main([*args, "--tags", "../../victim"]) == 0
    assert "'../../victim' -> victim" in capsys.readouterr().out
    assert len(list((out / "victim").iterdir())) == 4
    assert victim.read_bytes() == b"precious"
    assert victim.parent.iterdir().__next__() == victim and len(list(victim.parent.iterdir())) == 1


# --------------------------------------------------------------------------- 4. loading


def _raw_npz(path: Path, meta: dict, arrays: dict, compress: bool = False) -> None:
    """A state file written without `write_state`'s help: what a crafted file holds."""
    save = np.savez_compressed if compress else np.savez
    blob = np.frombuffer(json.dumps({**meta, "format_version": 1}).encode(), np.uint8)
    save(path, meta_json=blob, **arrays)


@pytest.fixture
def core_state():
    bf = BubbleFence(BubbleFenceConfig(seed=0))
    bf.ingest(clustered_embeddings(300), ids=[f"s{i}" for i in range(300)])
    return bf.state_dict()


def test_state_file_round_trips(core_state, tmp_path):
    meta, arrays = core_state
    bf = BubbleFence.from_state_dict(meta, arrays)
    bf.save(tmp_path / "s.npz")
    again = BubbleFence.load(tmp_path / "s.npz")
    assert again.assignments().equals(bf.assignments())


@pytest.mark.parametrize(
    ("case", "match"),
    [
        ("short_split", "'split' has 10 rows for 300 samples"),
        ("long_strings", "'split' holds strings of 20000 characters"),
        ("inflated", "inflates"),
        ("raw_member", "not an npy array"),
        ("object_member", "dtype object"),
        ("bad_pointer", "'duplicate_of' points at samples"),
        ("bubble_lengths", "bubble columns disagree"),
        ("model_name", "model name"),
        ("wide_rows", "'embeddings' is float32"),
    ],
)
def test_crafted_state_files_are_refused_with_one_message(core_state, tmp_path, case, match):
    meta, arrays = core_state
    meta, arrays = json.loads(json.dumps(meta)), dict(arrays)
    path = tmp_path / "crafted.npz"
    compress = False
    if case == "short_split":
        arrays["split"] = arrays["split"][:10]
    elif case == "long_strings":
        arrays["split"] = np.zeros(300, dtype="<U20000")
    elif case == "inflated":  # 10 MB of zeros in a few kB: a zip bomb in miniature
        arrays["split"] = np.zeros(10_000_000, np.int8)
        compress = True
    elif case == "bad_pointer":
        arrays["duplicate_of"] = arrays["duplicate_of"].copy()
        arrays["duplicate_of"][3] = 10**6
    elif case == "bubble_lengths":
        arrays["anchor_radius"] = arrays["anchor_radius"][:1]
    elif case == "model_name":
        meta["config"]["model_name"] = "x\n; rm -rf ~"
    elif case == "wide_rows":
        arrays["embeddings"] = np.zeros((300, 3), np.float32)
    _raw_npz(path, meta, arrays, compress)
    if case in ("raw_member", "object_member"):
        with zipfile.ZipFile(path, "a") as archive:
            if case == "raw_member":
                archive.writestr("extra.npy", b"just some bytes")
            else:
                buf = io.BytesIO()
                np.save(buf, np.array([{"a": 1}], dtype=object), allow_pickle=True)
                archive.writestr("extra.npy", buf.getvalue())
    with pytest.raises(StateDamagedError, match=match) as info:
        BubbleFence.load(path)
    assert "reset" in str(info.value) and "\n" not in str(info.value)


def _npy_claiming(shape: tuple, dtype: str = "|i1", data: bytes = b"\x00" * 16) -> bytes:
    """npy bytes whose header claims ``shape`` but that hold only ``data``."""
    buf = io.BytesIO()
    header = {"descr": dtype, "fortran_order": False, "shape": shape}
    np.lib.format.write_array_header_1_0(buf, header)
    return buf.getvalue() + data


def _tamper(ds, arrays: dict | None = None, **params) -> None:
    """Overwrites parts of the dataset's stored state, as a crafted database would."""
    if arrays:
        results = ds.load_run_results(bfo.RUN_KEY, cache=False)
        results.arrays.update(arrays)
        ds.save_run_results(bfo.RUN_KEY, results, overwrite=True, cache=False)
    if params:
        stored = bfo.state_info(ds)
        ds.update_run_config(bfo.RUN_KEY, ds.init_run(**{**stored, **params}))


@pytest.mark.parametrize(
    ("case", "match"),
    [
        ("huge_shape", "'split'.*bytes of data where its header says 10000000000000"),
        ("short_split", "'split' has 10 rows for 200 samples"),
        ("short_ids", "'ids' has 5 rows for 200 samples"),
        ("model_name", "model name"),
        ("model_name_long", "model name"),
        ("raw_bytes", "not an npy array"),
        ("not_base64", "not base64 text"),
        ("a_number", "a int where npy bytes belong"),
    ],
)
def test_crafted_dataset_states_are_refused_before_loading(field_dataset, monkeypatch, case, match):
    ds = field_dataset
    bfo.split(ds.limit(200), embeddings_field="emb")
    before = dict(zip(*ds.values(["id", "split"]), strict=True))
    bf, _ = bfo.load_state(ds)
    split_codes = bf.state_dict()[1]["split"]
    if case == "huge_shape":
        _tamper(ds, {"split": _npy_claiming((10**13,))})
    elif case == "short_split":
        _tamper(ds, {"split": runs.to_npy_text(split_codes[:10])})
    elif case == "short_ids":
        _tamper(ds, {"ids": runs.to_npy_text(np.array(ds.values("id")[:5]))})
    elif case == "model_name":
        _tamper(ds, model_name="org/model\x1b[2J")
    elif case == "model_name_long":
        _tamper(ds, model_name="a" * 5000)
    elif case == "raw_bytes":
        _tamper(ds, {"split": b"not npy at all"})
    elif case == "not_base64":
        _tamper(ds, {"split": "%% not base64 %%"})
    elif case == "a_number":
        _tamper(ds, {"split": 12})

    def no_model(*args, **kwargs):
        raise AssertionError("a model was loaded from a damaged state")

    monkeypatch.setattr("bubblefence_plugin.embedder.ImageEmbedder", no_model)
    ds.add_samples([fo.Sample(filepath="/nonexistent/new.png", emb=clustered_embeddings(1)[0])])
    with pytest.raises(StateDamagedError, match=match) as info:
        bfo.split(ds, embeddings_field="emb")
    message = str(info.value)  # says how to reset from every front end
    assert "BubbleFence reset" in message and "bubblefence_plugin reset" in message
    assert dict(zip(*ds.values(["id", "split"]), strict=True)) == {**before, ds.last().id: None}
    assert not bfo.is_locked(ds)
    # Through the CLI: one line, exit code 2.
    assert cli.main(["split", "--dataset", ds.name, "--embeddings-field", "emb"]) == 2
    # Reset is the way on.
    bfo.reset(ds)
    assert bfo.split(ds, embeddings_field="emb")["n_assigned"] == len(ds)


def test_crafted_state_through_the_operator(field_dataset):
    ds = field_dataset
    bfo.split(ds.limit(100), embeddings_field="emb")
    _tamper(ds, {"anchor": _npy_claiming((10**12,), "<i8")})
    with pytest.raises(ExecutionError, match="damaged.*reset"):
        foo.get_operator(SPLIT)(ds, embeddings_field="emb")


def test_stored_arrays_are_read_only_as_far_as_their_bytes_go():
    with pytest.raises(StateDamagedError, match="header says"):
        runs.from_npy_text(_npy_claiming((10**13,), "<f8"))
    assert runs.from_npy_text(runs.to_npy_text(np.arange(5))).tolist() == [0, 1, 2, 3, 4]


# --------------------------------------------------------------------------- 5. manifest


def _read_manifest(path) -> list[dict[str, str]]:
    """The manifest's rows, with the one quote put before formula-like cells removed."""
    with open(path, newline="", encoding="utf-8") as fh:
        return [
            {k: v[1:] if v.startswith("'") else v for k, v in row.items()}
            for row in csv.DictReader(fh)
        ]


def test_manifest_comes_from_the_state_and_carries_no_formula(media_dataset, tmp_path):
    ds = media_dataset
    sample = ds.match_tags("train").first()
    sample["split"] = '=HYPERLINK("https://evil.example/","click")'
    sample["duplicate_of"] = "@SUM(1+1)"
    sample.save()
    ds.limit(3).tag_samples("-2+3")
    out = tmp_path / "out"
    bfo.export(ds, out, "ImageDirectory", tags=["train", "-2+3"])

    rows = _read_manifest(out / "manifest.csv")
    row = next(r for r in rows if r["id"] == sample.id)
    assert row["split"] == "train" and row["duplicate_of"] == ""
    assert Path(sample.filepath).name in {p.name for p in (out / "train").iterdir()}
    with open(out / "manifest.csv", newline="", encoding="utf-8") as fh:
        raw = [cell for r in csv.reader(fh) for cell in r]
    assert not [c for c in raw if c[:1] in ("=", "+", "-", "@", "\t", "\r")]
    text = (out / "manifest.csv").read_text(encoding="utf-8")
    assert "\n" + '"' in text  # every cell quoted
    assert "=HYPERLINK" not in text and "@SUM" not in text


@pytest.mark.parametrize("value", ["=1+1", "+1", "-1", "@SUM(A1)", "\tx", "\rx", "'=x", "plain"])
def test_formula_cells_are_neutralised_and_read_back(tmp_path, value):
    cell = safe_csv_cell(value)
    assert cell[:1] not in ("=", "+", "-", "@", "\t", "\r")
    path = tmp_path / "m.csv"
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, quoting=csv.QUOTE_ALL)
        writer.writerow(["v"])
        writer.writerow([cell])
    assert _read_manifest(path) == [{"v": value}]


# --------------------------------------------------------------------------- 6. report


def test_html_report_stays_in_its_folder_whatever_the_dataset_name(field_dataset, tmp_path):
    audit = pytest.importorskip("bubblefence_plugin.fo.audit")
    ds = field_dataset
    bfo.split(ds, embeddings_field="emb")
    ds.name = f"a/../../../escaped_report-{ds._doc.id}"
    folder = tmp_path / "r1" / "r2" / "r3" / "reports"
    folder.mkdir(parents=True)
    result = audit.report(ds, split_source="split", embeddings_field="emb", html_path=folder)
    written = Path(result["html_path"])
    assert written.parent == folder and written.exists()
    assert [p for p in tmp_path.rglob("*.html")] == [written]


# --------------------------------------------------------------------------- 7. markdown


def test_escape_markdown_keeps_text_literal():
    text = escape_markdown(LINK_LABEL + " | # x\n- y <b>")
    assert "](" not in text and "\n" not in text
    assert "\\[docs\\]" in text and "\\|" in text and "\\<b\\>" in text
    assert escape_markdown("train 3") == "train 3"


def test_label_names_are_not_live_links_in_the_split_output(field_dataset):
    ds = field_dataset
    ds.set_values("label", [LINK_LABEL if i % 2 else "cat" for i in range(len(ds))])
    result = foo.execute_operator(
        SPLIT,
        ctx={
            "dataset": ds,
            "params": {"embeddings": "field", "embeddings_field": "emb", "label_field": "label"},
        },
    )
    shown = operator_requests(result)["show_output"][0]["results"]["summary"]
    assert escape_markdown(LINK_LABEL) in shown
    assert LINK_LABEL not in shown and "](https" not in shown


# --------------------------------------------------------------------------- 8. CLI


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    return err


def test_cli_symlink_loops_are_refused_without_a_dataset(
    dataset_name, image_factory, tmp_path, capsys
):
    image_factory(3, subdir="drive")
    folder = tmp_path / "drive"
    (folder / "loop.jpg").symlink_to(folder / "loop.jpg")
    assert cli.main(["split", "--dataset", dataset_name, "--folder", str(folder)]) == 2
    assert "loop.jpg" in _one_line_error(capsys)
    assert not fo.dataset_exists(dataset_name)
    looped = tmp_path / "looped"
    looped.symlink_to(looped)
    assert cli.main(["split", "--dataset", dataset_name, "--folder", str(looped)]) == 2
    _one_line_error(capsys)
    assert not fo.dataset_exists(dataset_name)


def test_cli_missing_folder_creates_nothing(dataset_name, capsys):
    assert cli.main(["split", "--dataset", dataset_name, "--folder", "/missing/folder"]) == 2
    assert "/missing/folder" in _one_line_error(capsys)
    assert not fo.dataset_exists(dataset_name)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("eval_ratio: [0.2\n", "not a valid YAML"),
        ("seed: !!python/object/apply:os.system ['echo pwned']\n", "not a valid YAML"),
        ("dataset_splits:\n  eval_ratio: abc\n", "dataset_splits.eval_ratio"),
        ("random_seed:\n  random_seed: 99999999999999999999999\n", "seed"),
    ],
)
def test_cli_bad_config_files_are_one_line(
    dataset_name, image_factory, tmp_path, capsys, text, match
):
    image_factory(3, subdir="drive")
    config = tmp_path / "cfg.yaml"
    config.write_text(text)
    args = ["split", "--dataset", dataset_name, "--folder", str(tmp_path / "drive")]
    assert cli.main([*args, "--config", str(config)]) == 2
    assert match in _one_line_error(capsys)
    assert not fo.dataset_exists(dataset_name)
    with pytest.raises(ValueError, match=match):
        BubbleFenceConfig.from_yaml(config)


@pytest.mark.parametrize(
    ("item", "match"),
    [
        ("seed=99999999999999999999999", "seed"),
        ("lid_k=99999999999999999999999", "lid_k"),
        ("seed=!!python/object/apply:os.system ['echo pwned']", "--set"),
        ("seed=[1", "--set"),
    ],
)
def test_cli_bad_set_values_are_refused_before_anything_is_written(
    dataset_name, image_factory, tmp_path, capsys, item, match
):
    image_factory(3, subdir="drive")
    args = ["split", "--dataset", dataset_name, "--folder", str(tmp_path / "drive")]
    assert cli.main([*args, "--set", item]) == 2
    assert match in _one_line_error(capsys)
    assert not fo.dataset_exists(dataset_name)


def test_huge_seed_is_refused_up_front_in_python_and_the_operator(field_dataset):
    ds = field_dataset
    with pytest.raises(ValueError, match=r"seed=99999999999999999999999 .*2\*\*63"):
        bfo.split(ds, embeddings_field="emb", seed=99999999999999999999999)
    with pytest.raises(ExecutionError, match="seed"):
        foo.get_operator(SPLIT)(ds, embeddings_field="emb", seed=2**63)
    assert not ds.has_field("split") or len(ds.exists("split")) == 0
    assert BubbleFenceConfig(seed=2**63 - 1).seed == 2**63 - 1


def test_cli_frozen_knob_with_a_folder_adds_nothing(dataset_name, image_factory, tmp_path, capsys):
    ds = fo.Dataset(dataset_name)
    ds.add_samples([fo.Sample(filepath=f"/nonexistent/{i}.png") for i in range(50)])
    ds.set_values("emb", list(clustered_embeddings(50)))
    bfo.split(ds, embeddings_field="emb")
    image_factory(3, subdir="drive")
    args = ["split", "--dataset", dataset_name, "--folder", str(tmp_path / "drive")]
    assert cli.main([*args, "--embeddings-field", "emb", "--set", "seed=5"]) == 2
    assert "seed" in _one_line_error(capsys)
    assert len(ds) == 50


def test_cli_reset_without_a_terminal_asks_for_yes(dataset_name, monkeypatch, capsys):
    ds = fo.Dataset(dataset_name)
    ds.add_sample(fo.Sample(filepath="/nonexistent/0.png"))
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    assert cli.main(["reset", "--dataset", dataset_name]) == 2
    assert "--yes" in _one_line_error(capsys)
    assert cli.main(["reset", "--dataset", dataset_name, "--yes"]) == 0


# --------------------------------------------------------------------------- 9. images


def test_one_pixel_high_images_embed(tiny_clip_dir, tmp_path):
    from PIL import Image

    from bubblefence_plugin.embedder import ImageEmbedder

    paths = []
    for mode in ("RGB", "L"):
        for size in ((1, 1), (3, 1), (100, 1), (1, 3), (1, 100)):
            p = tmp_path / f"{mode}_{size[0]}x{size[1]}.png"
            Image.new(mode, size, 128 if mode == "L" else (10, 200, 30)).save(p)
            paths.append(str(p))
    out = ImageEmbedder(tiny_clip_dir, device="cpu", batch_size=4).embed_paths(paths)
    assert out.errors == {} and out.n_ok == len(paths)
    assert np.isfinite(out.embeddings).all()


# --------------------------------------------------------------------------- 10. smaller


def test_empty_view_and_all_excluded_have_their_own_message(field_dataset):
    ds = field_dataset
    summary = bfo.split(ds.limit(0), embeddings_field="emb")
    assert "empty" in summary["message"] and "already assigned" not in summary["message"]
    ds.limit(5).tag_samples(bfo.EXCLUDED_TAG)
    summary = bfo.split(ds.limit(5), embeddings_field="emb")
    assert "excluded" in summary["message"]
    assert not ds.has_field("split") or len(ds.exists("split")) == 0


def test_renamed_embeddings_field_is_named_with_a_fix(field_dataset):
    ds = field_dataset
    bfo.split(ds.limit(100), embeddings_field="emb")
    ds.rename_sample_field("emb", "clip")
    with pytest.raises(ValueError, match=r"'emb'.*(renamed|deleted).*rename_sample_field") as info:
        bfo.split(ds, embeddings_field="emb")
    assert "no field" not in str(info.value)


def test_operators_refuse_unknown_parameters(field_dataset, tmp_path):
    ds = field_dataset
    params = {"embeddings": "field", "embeddings_field": "emb", "eval_ration": 0.3}
    with pytest.raises(ExecutionError, match="eval_ration"):
        foo.execute_operator(SPLIT, ctx={"dataset": ds, "params": params})
    assert not ds.has_field("split") or len(ds.exists("split")) == 0
    with pytest.raises(ExecutionError, match="keep_embedings"):
        foo.execute_operator(
            RESET, ctx={"dataset": ds, "params": {"confirm": True, "keep_embedings": True}}
        )
    export = {"export_dir": {"absolute_path": str(tmp_path / "x")}, "overwrit": True}
    with pytest.raises(ExecutionError, match="overwrit"):
        foo.execute_operator(EXPORT, ctx={"dataset": ds, "params": export})
    # Known parameters, advanced knobs included, still run.
    params = {"embeddings": "field", "embeddings_field": "emb", "lid_k": 10}
    foo.execute_operator(SPLIT, ctx={"dataset": ds, "params": params})
    assert len(ds.exists("split")) == 200


def test_a_few_wrong_dimension_rows_become_per_sample_errors(field_dataset):
    ds = field_dataset
    ids = ds.values("id")
    ds.set_values("emb", {ids[0]: np.ones(7), ids[1]: np.ones(3)}, key_field="id")
    summary = bfo.split(ds, embeddings_field="emb")
    assert summary["n_assigned"] == 198 and summary["n_errors"] == 2
    errors = dict(zip(*ds.exists(bfo.ERROR_FIELD).values(["id", bfo.ERROR_FIELD]), strict=True))
    assert set(errors) == set(ids[:2]) and all("wrong dimension" in m for m in errors.values())
    assert ds.select(ids[:2]).exists("split").count() == 0
