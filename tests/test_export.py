"""`bubblefence_plugin.fo.export`: each split to its folder, and the manifest."""

from __future__ import annotations

import csv

import pytest

pytestmark = pytest.mark.fiftyone

fo = pytest.importorskip("fiftyone")
bfo = pytest.importorskip("bubblefence_plugin.fo")


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

    with pytest.raises(ValueError, match="not empty"):
        bfo.export(ds, out)
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
