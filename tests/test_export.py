"""`bubblefence_plugin.fo.export`: each split to its folder, and the manifest."""

from __future__ import annotations

import csv
import importlib
import json
import shutil
from pathlib import Path

import pytest

from bubblefence_plugin.text import export_text

pytestmark = pytest.mark.fiftyone

fo = pytest.importorskip("fiftyone")
bfo = pytest.importorskip("bubblefence_plugin.fo")

PLUGIN = "@bubblefence/bubblefence"


def test_export_round_trip_and_manifest(media_dataset, tmp_path, fo_datasets):
    ds = media_dataset
    out = tmp_path / "export"
    result = bfo.export(ds, out)
    counts = ds.count_values("split")
    assert result["counts"] == {s: counts.get(s, 0) for s in bfo.SPLIT_TAGS}

    for name in bfo.SPLIT_TAGS:
        back = fo.Dataset.from_dir(str(out / name), dataset_type=fo.types.FiftyOneDataset)
        fo_datasets.append(back)
        expected = ds.match_tags(name)
        assert sorted(back.values("id")) == sorted(expected.values("id"))
        assert set(back.distinct("split")) == {name}

    with open(out / "manifest.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert tuple(rows[0]) == bfo.MANIFEST_COLUMNS
    assert len(rows) == sum(result["counts"].values())
    by_id = {r["id"]: r for r in rows}
    for sid, fp, split, anchor, rnd in zip(
        *ds.values(["id", "filepath", "split", "anchor_id", "bubblefence_round"]), strict=True
    ):
        if split in bfo.SPLIT_TAGS:
            row = by_id[sid]
            assert (row["source_filepath"], row["split"], row["round"]) == (fp, split, str(rnd))
            assert row["anchor_id"] == ("" if anchor is None else str(anchor))
            assert row["exported_filepath"] == f"{split}/data/{Path(fp).name}"

    with pytest.raises(ValueError, match="not empty"):
        bfo.export(ds, out)
    # The datasets read back keep their media in it: an overwrite would delete them
    # (found by a stress test: it did).
    with pytest.raises(ValueError, match="contains the media of dataset"):
        bfo.export(ds, out, overwrite=True)
    assert (out / "manifest.csv").exists()
    for back in fo_datasets[1:]:
        back.delete()
    # Images-only export of a chosen tag, overwriting.
    ds.limit(7).tag_samples("picked")
    result = bfo.export(ds, out, "ImageDirectory", tags=["picked"], overwrite=True)
    assert result["counts"] == {"picked": 7}
    assert len(list((out / "picked").iterdir())) == 7
    assert not (out / "train").exists()


def test_export_refuses_to_overwrite_media(field_dataset, tmp_path):
    from PIL import Image

    ds = field_dataset
    media = tmp_path / "media"
    media.mkdir()
    for i in range(3):
        Image.new("RGB", (8, 8)).save(media / f"{i}.png")
    ds.set_values("filepath", [str(media / f"{i % 3}.png") for i in range(len(ds))])
    bfo.split(ds, embeddings_field="emb")
    with pytest.raises(ValueError, match="media"):
        bfo.export(ds, media, overwrite=True)
    assert len(list(media.iterdir())) == 3


def test_an_export_with_nothing_to_export_is_refused_before_it_writes(field_dataset, tmp_path):
    """Never split, or a tag no sample carries (a typo): an error, no folder; a split
    left empty (a view without test samples) beside others is exported as it is."""
    ds = field_dataset
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="no sample is tagged 'train', 'validation' or 'test'"):
        bfo.export(ds, out)
    assert not out.exists()
    bfo.split(ds, embeddings_field="emb")
    with pytest.raises(ValueError, match=r"no sample is tagged 'tset'.*'test'"):
        bfo.export(ds, out, tags=["test", "tset"])
    assert not out.exists()
    result = bfo.export(ds.match_tags("test", bool=False), out, export_media=False)
    assert result["counts"]["test"] == 0 and result["counts"]["train"] > 0


@pytest.mark.parametrize(
    "dataset_type, match",
    [
        ("UnlabeledImageDataset", "cannot be exported"),
        ("FiftyOneDataset", "label_field 'nosuch': the dataset has no such field"),
        (fo.types.GroupDataset, "cannot be exported"),
        ("ImageDirectry", "is not a fiftyone.types dataset type"),
        ("Classification", "is not a fiftyone.types dataset type"),
        (int, "is not a fiftyone.types dataset type"),
    ],
)
def test_a_type_that_cannot_export_is_named_before_anything_is_written(
    field_dataset, tmp_path, dataset_type, match
):
    bfo.split(field_dataset, embeddings_field="emb")
    with pytest.raises(ValueError, match=match):
        bfo.export(field_dataset, tmp_path / "out", dataset_type, label_field="nosuch")
    assert not (tmp_path / "out").exists()


def _manifest(path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_duplicates_are_listed_in_the_manifest_not_exported(media_dataset, tmp_path):
    ds = media_dataset
    original = ds.first()
    twin = fo.Sample(filepath=original.filepath, emb=original.emb)
    ds.add_sample(twin)
    bfo.split(ds, embeddings_field="emb")
    assert ds[twin.id].split == "duplicate"
    result = bfo.export(ds, tmp_path / "out", "ImageDirectory")
    rows = {r["id"]: r for r in _manifest(tmp_path / "out" / "manifest.csv")}
    assert result["n_manifest_rows"] == len(rows) == sum(result["counts"].values()) + 1
    row = rows[twin.id]
    assert (row["split"], row["duplicate_of"], row["export_folders"]) == (
        "duplicate",
        original.id,
        "{}",
    )
    assert row["exported_filepath"] == ""
    assert rows[original.id]["exported_filepath"]  # the original is exported
    # A view without the duplicate lists none: the state's duplicates are the dataset's.
    view = ds.exclude([twin.id])
    result = bfo.export(view, tmp_path / "view", "ImageDirectory")
    rows = _manifest(tmp_path / "view" / "manifest.csv")
    assert result["n_manifest_rows"] == len(rows) == len(view)
    assert twin.id not in {r["id"] for r in rows}


@pytest.fixture
def twin_names_dataset(media_dataset, tmp_path):
    """media_dataset with its images in two folders, each name in both (a/7.png and
    b/7.png, different images), a classification ``cls`` and detections ``det``."""
    from PIL import Image

    ds = media_dataset
    paths = []
    for i in range(len(ds)):
        path = tmp_path / "twins" / "ab"[i % 2] / f"{i // 2}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8), (i % 256, 255 - i % 256, 7)).save(path)
        paths.append(str(path))
    ds.set_values("filepath", paths)
    # Twins share a class too: the class folders hold equal names.
    ds.set_values("cls", [fo.Classification(label=f"c{i // 2 % 2}") for i in range(len(ds))])
    box = fo.Detection(label="thing", bounding_box=[0.1, 0.1, 0.5, 0.5])
    ds.set_values("det", [fo.Detections(detections=[box.copy()]) for _ in range(len(ds))])
    return ds


LABEL_FIELDS = {
    "FiftyOneImageClassificationDataset": "cls",
    "ImageClassificationDirectoryTree": "cls",
    "COCODetectionDataset": "det",
    "VOCDetectionDataset": "det",
    "YOLOv5Dataset": "det",
    "CVATImageDataset": "det",
    "FiftyOneImageDetectionDataset": "det",
}


@pytest.mark.parametrize("dataset_type", sorted(bfo.EXPORT_TYPES))
def test_the_manifest_names_each_exported_file_as_the_exporter_named_it(
    twin_names_dataset, tmp_path, dataset_type
):
    ds = twin_names_dataset
    out = tmp_path / "out"
    bfo.export(ds, out, dataset_type, label_field=LABEL_FIELDS.get(dataset_type))
    rows = _manifest(out / "manifest.csv")
    assert len(rows) == len(ds.match_tags(list(bfo.SPLIT_TAGS))) and rows
    files = [row["exported_filepath"] for row in rows]
    for row, file in zip(rows, files, strict=True):
        exported = out / file
        assert file and exported.is_file(), (row["source_filepath"], file)
        # train/data/7.png, images/train/7.png (YOLO's validation folder is `val`)
        folder = json.loads(row["export_folders"])[row["split"]]
        assert folder in Path(file).parts
        assert exported.read_bytes() == Path(row["source_filepath"]).read_bytes()
    # Equal names from two folders exported into one: the exporter renamed one copy.
    assert len(set(files)) == len(files)
    assert any(Path(file).stem.endswith("-2") for file in files)


def test_a_sample_exported_under_two_tags_has_a_file_in_each_folder(twin_names_dataset, tmp_path):
    ds = twin_names_dataset
    ds.limit(4).tag_samples("first")
    ds.limit(2).tag_samples("second")
    out = tmp_path / "out"
    bfo.export(ds, out, "ImageDirectory", tags=["first", "second"])
    rows = {r["id"]: r for r in _manifest(out / "manifest.csv")}
    both = ds.first()
    files = rows[both.id]["exported_filepath"].split("\n")
    assert [f.split("/")[0] for f in files] == ["first", "second"]
    assert all((out / f).read_bytes() == Path(both.filepath).read_bytes() for f in files)
    # Nothing exported, no file named: media left in place.
    bfo.export(ds, out, "FiftyOneDataset", tags=["first"], export_media=False, overwrite=True)
    assert {r["exported_filepath"] for r in _manifest(out / "manifest.csv")} == {""}


def test_a_labelled_format_takes_the_one_label_field_or_says_which(media_dataset, tmp_path):
    ds = media_dataset
    ds.set_values("gt", [fo.Classification(label=f"c{i % 3}") for i in range(len(ds))])
    out = tmp_path / "tree"
    bfo.export(ds, out, "ImageClassificationDirectoryTree", splits=["train"])
    assert sorted(p.name for p in (out / "train").iterdir()) == ["c0", "c1", "c2"]

    ds.set_values("other", [fo.Classification(label="x")] * len(ds))
    with pytest.raises(ValueError, match=r"needs label_field .*\['gt', 'other'\]"):
        bfo.export(ds, tmp_path / "two", "ImageClassificationDirectoryTree")
    with pytest.raises(ValueError, match="writes Detections labels and this dataset has no"):
        bfo.export(ds, tmp_path / "none", "VOCDetectionDataset")
    with pytest.raises(ValueError, match="'emb' is not a Classification field"):
        bfo.export(ds, tmp_path / "bad", "ImageClassificationDirectoryTree", label_field="emb")
    assert not any((tmp_path / d).exists() for d in ("two", "none", "bad"))


def test_a_failing_exporter_leaves_no_folder_behind(media_dataset, tmp_path):
    ds = media_dataset
    ds.match_tags("test").take(1, seed=0).set_values("filepath", [str(tmp_path / "gone.png")])
    with pytest.raises(ValueError, match="exporting as ImageDirectory failed, nothing was kept"):
        bfo.export(ds, tmp_path / "out", "ImageDirectory")
    assert not (tmp_path / "out").exists()


def test_an_export_while_a_run_holds_the_split_or_changes_it_keeps_nothing(
    field_dataset, tmp_path, monkeypatch
):
    """The export reads the split tags as it goes: a split running beside it made it
    write a mix of the old and new split (127 train samples missing, the manifest
    disagreeing). Refused while a run holds the dataset, and undone when one changed the
    split during the export."""
    import importlib

    from bubblefence_plugin.fo import runs

    # The package's `export` function hides its module of the same name.
    export_module = importlib.import_module("bubblefence_plugin.fo.export")

    ds = field_dataset
    bfo.split(ds, embeddings_field="emb")
    with runs.RunLock(ds, "split"):
        with pytest.raises(bfo.BubbleFenceBusyError, match="in progress"):
            bfo.export(ds, tmp_path / "locked", export_media=False)
    assert not (tmp_path / "locked").exists()

    real_export_each = export_module._export_each

    def export_while_a_sample_is_excluded(*args, **kwargs):
        done = real_export_each(*args, **kwargs)
        bfo.exclude(ds.match_tags("test").limit(1))  # another process, mid-export
        return done

    monkeypatch.setattr(export_module, "_export_each", export_while_a_sample_is_excluded)
    with pytest.raises(bfo.BubbleFenceBusyError, match="changed during the export.*export again"):
        bfo.export(ds, tmp_path / "changed", export_media=False)
    assert not (tmp_path / "changed").exists()
    monkeypatch.undo()
    assert (
        bfo.export(ds, tmp_path / "again", export_media=False)["counts"]["test"]
        == ds.count_sample_tags()["test"]
    )


def test_a_round_stopped_before_its_tags_is_finished_by_a_split_before_it_is_exported(
    field_dataset, tmp_path, monkeypatch
):
    """A split killed between its commit and its tag writes: the state holds the round,
    the tags do not, and the export (by tags) left the round's samples out, silently."""
    from conftest import add_embedded_samples, operator_form, split_stopped_at

    ds = field_dataset
    bfo.split(ds, embeddings_field="emb")
    add_embedded_samples(ds, 100, seed=4)
    split_stopped_at(ds, "_write_round_fields", monkeypatch)
    with pytest.raises(ValueError, match="round 1 .* was saved.*run the split again"):
        bfo.export(ds, tmp_path / "out", export_media=False)
    assert not (tmp_path / "out").exists()
    # The forms say so before Execute (they said nothing; found by a stress test).
    assert bfo.unfinished_round(bfo.state_info(ds)) == 1
    assert (
        "Round 1 was saved"
        in operator_form(ds, f"{PLUGIN}/bubblefence_export")["refused_now"]["error_message"]
    )
    assert (
        "this run writes them first"
        in operator_form(ds, f"{PLUGIN}/bubblefence_split")["state_notice"]["view"]["label"]
    )
    # While a run holds the dataset its round is being written, not stopped: said so.
    from bubblefence_plugin.fo.runs import RunLock

    with RunLock(ds, "split"):
        export_form = operator_form(ds, f"{PLUGIN}/bubblefence_export")
        split_form = operator_form(ds, f"{PLUGIN}/bubblefence_split")
    assert "run is in progress" in export_form["refused_now"]["error_message"]
    notice = split_form["state_notice"]["view"]["label"]
    assert "run is in progress" in notice and "was stopped" not in notice
    assert bfo.split(ds)["n_repaired"] == 100
    assert bfo.unfinished_round(bfo.state_info(ds)) is None
    assert "refused_now" not in operator_form(ds, f"{PLUGIN}/bubblefence_export")
    assert sum(bfo.export(ds, tmp_path / "out", export_media=False)["counts"].values()) == 300


def test_samples_with_two_split_tags_are_refused_with_the_way_to_keep_one(field_dataset, tmp_path):
    """A test sample also tagged train (merged tags of another split of the same images,
    or a tag added by hand) was exported into both folders, silently."""
    ds = field_dataset
    bfo.split(ds, embeddings_field="emb")
    ds.match_tags("test").limit(5).tag_samples("train")
    with pytest.raises(ValueError, match="5 samples carry the tags of two or more splits"):
        bfo.export(ds, tmp_path / "out", export_media=False)
    assert not (tmp_path / "out").exists()
    # The recipe the message gives: keep the tag of the split field.
    F = fo.ViewField
    for t in ("train", "validation", "test"):
        ds.match_tags(t).match(F("split") != t).untag_samples(t)
    counts = bfo.export(ds, tmp_path / "out", export_media=False)["counts"]
    assert counts == {s: ds.count_values("split")[s] for s in bfo.SPLIT_TAGS}
    # Other tags than the splits may overlap: exported as asked.
    ds.take(3, seed=1).tag_samples("a")
    ds.take(3, seed=1).tag_samples("b")
    assert bfo.export(ds, tmp_path / "ab", tags=["a", "b"], export_media=False)["counts"] == {
        "a": 3,
        "b": 3,
    }


def test_split_tags_that_disagree_with_the_state_are_refused_until_a_split_restores_them(
    media_dataset, tmp_path, monkeypatch
):
    # Found by a stress test: the export went by tags, the manifest by the state, and
    # neither said so: a tag removed left the sample out, a tag moved put it on the other
    # side, a sample tagged excluded (by hand, or by an exclusion that was stopped) shipped.
    ds = media_dataset
    validation, test = ds.match_tags("validation").values("id"), ds.match_tags("test").values("id")
    ds.select(validation[:1]).untag_samples("validation")
    ds.select(validation[1:2]).untag_samples("validation")
    ds.select(validation[1:2]).tag_samples("train")
    ds.select(test[:1]).tag_samples(bfo.EXCLUDED_TAG)
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="split tags of 3 samples disagree") as info:
        bfo.export(ds, out)
    message = str(info.value)
    assert "tagged with no split, in validation" in message
    assert "tagged train, in validation" in message
    assert "tagged 'excluded', still in test" in message
    assert not out.exists()
    # Tags of one's own are still exported as they are.
    assert bfo.export(ds, out, tags=["train"], export_media=False)["counts"]["train"] > 0
    # A split puts BubbleFence's tags back and takes the excluded sample out.
    bfo.split(ds)
    result = bfo.export(ds, tmp_path / "again", export_media=False)
    assert result["counts"]["validation"] == len(validation)
    assert result["counts"]["test"] == len(test) - 1


def test_yolo_splits_share_one_class_list(media_dataset, tmp_path, caplog):
    # Found by a stress test: FiftyOne lists each split's classes as they appear, and
    # refused the second split whose list differed.
    import yaml

    ds = media_dataset
    classes = ["cat", "dog", "zebra"]
    ds.set_values(
        "det",
        [
            fo.Detections(
                detections=[fo.Detection(label=classes[(i * 7) % 3], bounding_box=[0, 0, 0.5, 0.5])]
            )
            for i in range(len(ds))
        ],
    )
    ds.match_tags("validation").set_field("det.detections.label", "zebra").save()
    with caplog.at_level("WARNING"):
        result = bfo.export(ds, tmp_path / "yolo", "YOLOv5Dataset", label_field="det")
    assert result["counts"]["validation"] > 0
    # FiftyOne's "already exists; export will be merged", three times, read as if an old
    # export were mixed in: the folder is this export's own.
    assert "export will be merged" not in caplog.text
    described = yaml.safe_load((tmp_path / "yolo" / "dataset.yaml").read_text())
    assert described["names"] in (classes, dict(enumerate(classes)))
    # YOLO trainers read `val` (a tester found `validation`, which none looks for).
    assert {"train", "val", "test"} <= set(described) and "validation" not in described
    assert result["folders"]["validation"] == "val"


def test_a_tag_export_lists_only_the_duplicates_of_samples_it_exported(field_dataset, tmp_path):
    ds = field_dataset
    vectors = ds.values("emb")
    ds.add_samples([fo.Sample(filepath=f"/nonexistent/copy{i}.png") for i in range(2)])
    ds.skip(200).set_values("emb", [vectors[3], vectors[5]])
    bfo.split(ds, embeddings_field="emb")
    first, second = ds.skip(3).first(), ds.skip(5).first()
    ds.select([first.id]).tag_samples("picked")
    result = bfo.export(ds, tmp_path / "out", tags=["picked"], export_media=False)
    with open(result["manifest"], newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["duplicate_of"] for r in rows if r["split"] == "duplicate"] == [first.id]
    assert second.id not in {r["duplicate_of"] for r in rows}


def test_an_overwrite_that_fails_keeps_the_export_it_was_replacing(media_dataset, tmp_path):
    # Found by a stress test: the old export was deleted first, then the new one failed.
    export_module = importlib.import_module("bubblefence_plugin.fo.export")
    ds = media_dataset
    out = tmp_path / "out"
    bfo.export(ds, out, "ImageDirectory")
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    with pytest.MonkeyPatch.context() as patched:
        patched.setattr(export_module, "_export_each", _failing_export)
        with pytest.raises(ValueError, match="the folder's earlier contents are back"):
            bfo.export(ds, out, overwrite=True)
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["media", "out"]
    bfo.export(ds, out, overwrite=True, export_media=False)  # replaced, nothing left beside
    assert sorted(p.name for p in tmp_path.iterdir()) == ["media", "out"]
    assert not (out / export_module.UNFINISHED_MARK).exists()


def test_an_export_stopped_by_ctrl_c_cleans_up_as_a_failed_one_does(media_dataset, tmp_path):
    """Ctrl-C left the half export (and, for an overwrite, the earlier one hidden in a
    sibling folder), where a failure removes it and puts the earlier one back."""
    export_module = importlib.import_module("bubblefence_plugin.fo.export")
    ds = media_dataset
    out = tmp_path / "out"
    with pytest.MonkeyPatch.context() as patched:
        patched.setattr(export_module, "_write_manifest", _stopped)
        with pytest.raises(KeyboardInterrupt):
            bfo.export(ds, out, "ImageDirectory")
    assert not out.exists()
    bfo.export(ds, out, "ImageDirectory")
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    with pytest.MonkeyPatch.context() as patched:
        patched.setattr(export_module, "_write_manifest", _stopped)
        with pytest.raises(KeyboardInterrupt):
            bfo.export(ds, out, "ImageDirectory", overwrite=True)
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["media", "out"]


def test_what_a_killed_export_left_is_named_by_the_next(media_dataset, tmp_path):
    """A process killed mid-export leaves its mark; one killed mid-overwrite also leaves
    the earlier contents in a hidden sibling, which an overwrite then hid for good (and
    of two such siblings the message named one at random)."""
    export_module = importlib.import_module("bubblefence_plugin.fo.export")
    ds = media_dataset
    out = tmp_path / "out"
    bfo.export(ds, out, "ImageDirectory")
    # As a kill right after moving the earlier export aside leaves the folders.
    aside = tmp_path / ".out.replaced-0000ffff"
    out.rename(aside)
    out.mkdir()
    (out / export_module.UNFINISHED_MARK).write_text("stopped")
    for overwrite in (False, True):
        with pytest.raises(
            ValueError, match=r"was stopped after it moved .*out\.replaced-0000ffff"
        ):
            bfo.export(ds, out, "ImageDirectory", overwrite=overwrite)
    shutil.rmtree(aside)
    with pytest.raises(ValueError, match="holds an export that did not finish"):
        bfo.export(ds, out, "ImageDirectory")
    bfo.export(ds, out, "ImageDirectory", overwrite=True)
    assert not (out / export_module.UNFINISHED_MARK).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["media", "out"]


@pytest.mark.parametrize("dataset_type", ["ImageDirectory", "ImageClassificationDirectoryTree"])
def test_a_format_of_media_files_without_media_is_refused_by_name(
    media_dataset, tmp_path, dataset_type
):
    # FiftyOne's own words named no option: "Unsupported media export mode `False`".
    with pytest.raises(ValueError, match=rf"{dataset_type} is made of the media files .*no-media"):
        bfo.export(media_dataset, tmp_path / "out", dataset_type, export_media=False)
    assert not (tmp_path / "out").exists()


def test_export_reports_progress_per_split_and_ends_done(media_dataset, tmp_path):
    # A delegated export ended at 0 % "Exporting to ..." (found by a stress test).
    events = []
    bfo.export(media_dataset, tmp_path / "out", export_media=False, progress=_record(events))
    fractions = [f for f, _ in events]
    assert fractions == sorted(fractions) and events[-1] == (1.0, "Done")
    assert [label.split(":")[0] for _, label in events[:3]] == [
        "Exporting train",
        "Exporting validation",
        "Exporting test",
    ]


def _record(events):
    return lambda fraction, label: events.append((fraction, label))


def _failing_export(*args, **kwargs):
    raise RuntimeError("the exporter failed")


def _stopped(*args, **kwargs):
    raise KeyboardInterrupt("killed")


def test_an_original_deleted_since_the_split_is_refused_until_its_copy_takes_its_place(
    field_dataset, tmp_path
):
    # Found by a lifecycle fuzz: exported straight after its original was deleted, a copy
    # was in no split, listed as the duplicate of a sample that is gone.
    ds = field_dataset
    ds.add_sample(fo.Sample(filepath="/nonexistent/copy.png", emb=ds.skip(3).first().emb))
    bfo.split(ds, embeddings_field="emb")
    original, copy = ds.skip(3).first().id, ds.skip(200).first().id
    ds.delete_samples([original])
    with pytest.raises(ValueError, match="1 split sample with duplicates was deleted since"):
        bfo.export(ds, tmp_path / "out", export_media=False)
    assert not (tmp_path / "out").exists()
    bfo.split(ds)
    result = bfo.export(ds, tmp_path / "out", export_media=False)
    with open(result["manifest"], newline="") as fh:
        row = {r["id"]: r for r in csv.DictReader(fh)}[copy]
    assert row["split"] in bfo.SPLIT_TAGS and row["duplicate_of"] == ""
    # An original deleted with its every copy leaves nothing waiting: no refusal.
    ds.add_sample(fo.Sample(filepath="/nonexistent/copy2.png", emb=ds.skip(5).first().emb))
    bfo.split(ds)
    ds.delete_samples([ds.skip(5).first().id, ds.skip(len(ds) - 1).first().id])
    bfo.export(ds, tmp_path / "out2", export_media=False)


def test_an_overwrite_stopped_while_deleting_what_it_replaced_leaves_nothing_to_refuse(
    media_dataset, tmp_path, monkeypatch
):
    """Ctrl-C while the finished overwrite deleted the old contents left half of them
    under the name the next export refuses on, telling the user to move a partial old
    export back over a complete new one. And a folder named with glob characters
    (`exp[1]`) had its moved-aside contents found by no glob, so never named."""
    export_module = importlib.import_module("bubblefence_plugin.fo.export")
    ds = media_dataset
    out = tmp_path / "exp[1]"
    bfo.export(ds, out, "ImageDirectory")
    real_rmtree = shutil.rmtree

    def stopped_midway(path, *args, **kwargs):
        if export_module.DISCARDED_INFIX in str(path):
            (Path(path) / "train").rename(tmp_path / "gone")  # part of it deleted
            raise KeyboardInterrupt
        return real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr(export_module.shutil, "rmtree", stopped_midway)
    with pytest.raises(KeyboardInterrupt):
        bfo.export(ds, out, "ImageDirectory", overwrite=True)
    monkeypatch.undo()
    assert (out / "manifest.csv").exists()
    assert [p.name for p in tmp_path.glob(".exp*")] == [
        p.name for p in tmp_path.glob(".exp*") if export_module.DISCARDED_INFIX in p.name
    ]
    bfo.export(ds, out, "ImageDirectory", overwrite=True)  # not refused; removes the rest
    assert list(tmp_path.glob(".exp*")) == []
    # A killed overwrite of `exp[1]`: its moved-aside contents are named.
    aside = tmp_path / ".exp[1].replaced-0000ffff"
    out.rename(aside)
    with pytest.raises(ValueError, match=r"was stopped after it moved"):
        bfo.export(ds, out, "ImageDirectory", overwrite=True)


def _user_split(ds, validation_tag: str = "validation") -> None:
    """A split of the user's, as tags (no BubbleFence state): 120 / 40 / 40."""
    ids = ds.values("id")
    ds.select(ids[:120]).tag_samples("train")
    ds.select(ids[120:160]).tag_samples(validation_tag)
    ds.select(ids[160:]).tag_samples("test")


def test_an_export_of_samples_in_no_split_says_why(field_dataset, tmp_path):
    """Found by a tester: exporting a selection of samples just excluded said "Run the
    BubbleFence split first", on a dataset that had a split."""
    ds = field_dataset
    bfo.split(ds, embeddings_field="emb")
    excluded = ds.limit(20).values("id")
    bfo.exclude(ds.select(excluded))
    message = "none of these 20 samples is in it, 20 of them excluded: export the dataset"
    with pytest.raises(ValueError, match=message):
        bfo.export(ds.select(excluded), tmp_path / "out", export_media=False)
    assert not (tmp_path / "out").exists()


def test_tags_export_on_a_dataset_never_split(field_dataset, tmp_path):
    """Found by a tester: with no stored split, a tags export read the state's missing
    `duplicate_of` column and failed (the App's and the command line's too)."""
    ds = field_dataset
    ds.limit(10).tag_samples("to_label")
    result = bfo.export(ds, tmp_path / "out", tags=["to_label"], export_media=False)
    assert result["counts"] == {"to_label": 10}
    assert len(_manifest(tmp_path / "out" / "manifest.csv")) == 10


def test_split_aliases_are_exported_as_their_split_and_two_splits_refused(field_dataset, tmp_path):
    """Found by a tester: a zoo-style split tagged ``val`` exported no validation sample,
    unsaid, where the audit and `sample` read ``val`` as validation."""
    ds = field_dataset
    _user_split(ds, "val")
    result = bfo.export(ds, tmp_path / "out", export_media=False)
    assert result["counts"] == {"train": 120, "validation": 40, "test": 40}
    rows = _manifest(tmp_path / "out" / "manifest.csv")
    val_ids = set(ds.match_tags("val").values("id"))
    assert {r["id"] for r in rows if r["export_folders"] == '{"validation": "validation"}'} == (
        val_ids
    )
    # No state: the manifest's split is the one each sample was exported under.
    assert {r["id"] for r in rows if r["split"] == "validation"} == val_ids
    assert {r["split"] for r in rows} == {"train", "validation", "test"}
    with pytest.raises(ValueError, match=r"splits=\['val'\]: a split is one of"):
        bfo.export(ds, tmp_path / "named", splits=["val"], export_media=False)
    # Train and val on one sample: two splits, as train and validation are.
    ds.match_tags("val").limit(3).tag_samples("train")
    with pytest.raises(ValueError, match="3 samples carry the tags of two or more splits"):
        bfo.export(ds, tmp_path / "two", export_media=False)
    assert not (tmp_path / "two").exists()


def test_excluded_samples_of_a_users_split_are_left_out_of_its_export(field_dataset, tmp_path):
    """Found by a tester: excluding samples of a split not made by BubbleFence left their
    tags (nothing of BubbleFence's to leave), and the export shipped them."""
    ds = field_dataset
    _user_split(ds)
    excluded = ds.match_tags("validation").limit(4).values("id")
    bfo.exclude(ds.select(excluded))
    result = bfo.export(ds, tmp_path / "out", export_media=False)
    assert result["counts"] == {"train": 120, "validation": 36, "test": 40}
    assert result["n_excluded_left_out"] == 4
    assert not {r["id"] for r in _manifest(tmp_path / "out" / "manifest.csv")} & set(excluded)
    assert "left out: 4 samples tagged 'excluded'" in export_text(result).plain()


def test_a_failed_export_leaves_none_of_the_folders_it_made(media_dataset, tmp_path):
    """Found by a tester: the folders made above the export folder stayed after a
    failure that said "nothing was kept"."""
    ds = media_dataset
    ds.match_tags("test").take(1, seed=0).set_values("filepath", [str(tmp_path / "gone.png")])
    (tmp_path / "kept").mkdir()
    for target in (tmp_path / "new" / "a" / "b", tmp_path / "kept" / "a" / "b"):
        with pytest.raises(ValueError, match="nothing was kept"):
            bfo.export(ds, target, "ImageDirectory")
    assert not (tmp_path / "new").exists()
    assert (tmp_path / "kept").is_dir() and not any((tmp_path / "kept").iterdir())
