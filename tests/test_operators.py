"""The plugin through FiftyOne's own operator machinery (loader, executor, delegation)."""

from __future__ import annotations

import asyncio

import pytest
from conftest import operator_form as form
from conftest import operator_requests

pytestmark = pytest.mark.fiftyone

fo = pytest.importorskip("fiftyone")
foo = pytest.importorskip("fiftyone.operators")
bfo = pytest.importorskip("bubblefence_plugin.fo")
runs = pytest.importorskip("bubblefence_plugin.fo.runs")
bfmap = pytest.importorskip("bubblefence_plugin.fo.map")

from fiftyone.operators.delegated import DelegatedOperationService  # noqa: E402
from fiftyone.operators.executor import (  # noqa: E402
    ExecutionError,
    ExecutionResult,
)
from fiftyone.operators.registry import OperatorRegistry  # noqa: E402

from bubblefence_plugin.text import escape_markdown  # noqa: E402

PLUGIN = "@bubblefence/bubblefence"
SPLIT = f"{PLUGIN}/bubblefence_split"
RESET = f"{PLUGIN}/bubblefence_reset"
EXPORT = f"{PLUGIN}/bubblefence_export"


@pytest.fixture
def image_dataset(image_factory, fo_datasets):
    ds = fo.Dataset()
    fo_datasets.append(ds)
    ds.add_samples([fo.Sample(filepath=p) for p in image_factory(60, seed=0)])
    return ds


def test_registry_lists_our_operators_without_errors():
    registry = OperatorRegistry()
    uris = {op.uri for op in registry.list_operators()}
    assert {SPLIT, RESET, EXPORT} <= uris
    assert [e for e in registry.list_errors() if "bubblefence" in str(e).lower()] == []
    assert registry.list_errors() == []
    assert foo.get_operator(SPLIT).config.label == "BubbleFence split"


def run_unraised(uri: str, ctx: dict) -> ExecutionResult:
    """Runs an operator and returns its result even when it failed: inside a running event
    loop `execute_operator` hands back its task instead of raising."""

    async def run() -> ExecutionResult:
        return await foo.execute_operator(uri, ctx=ctx)

    return asyncio.run(run())


def test_split_form_has_defaults_descriptions_and_folded_advanced(field_dataset):
    # A dataset with a vector field splits by it unless told otherwise: no model run.
    props = form(field_dataset, SPLIT, {})
    assert props["embeddings"]["default"] == "field"
    assert props["embeddings_field"]["default"] == "emb"
    # Vectors stored as Python lists (a list of floats) are offered too.
    field_dataset.rename_sample_field("emb", "vectors")
    field_dataset.set_values(
        "as_list", [list(map(float, v)) for v in field_dataset.values("vectors")]
    )
    field_dataset.delete_sample_field("vectors")
    props = form(field_dataset, SPLIT, {})
    assert props["embeddings"]["default"] == "field"
    assert props["embeddings_field"]["default"] == "as_list"
    field_dataset.set_values("emb", field_dataset.values("as_list"))  # as the rest expects
    props = form(field_dataset, SPLIT, {"embeddings": "model"})
    for name in (
        "eval_ratio",
        "validation_ratio",
        "shell_layout",
        "dedup_threshold",
        "dedup_policy",
        "seed",
        "embeddings",
        "model_name",
    ):
        assert name in props, name
        assert (
            props[name]["view"].get("description")
            or props[name]["view"].get("caption")
            or name in ("embeddings",)
        ), name
    assert props["eval_ratio"]["default"] == 0.2
    assert props["model_name"]["default"] == "openai/clip-vit-base-patch32"
    assert "lid_k" not in props and "show_advanced" in props
    props = form(field_dataset, SPLIT, {"show_advanced": True, "embeddings": "field"})
    assert "lid_k" in props and "label_field" in props
    assert "emb" in str(props["embeddings_field"])


def test_split_immediate_with_tiny_clip_and_a_corrupt_image(image_dataset, tiny_clip_dir, tmp_path):
    ds = image_dataset
    bad = tmp_path / "corrupt.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    ds.add_sample(fo.Sample(filepath=str(bad)))
    result = foo.execute_operator(
        SPLIT, ctx={"dataset": ds, "params": {"model_name": tiny_clip_dir, "eval_ratio": 0.25}}
    )
    requests = operator_requests(result)
    progress = [p["progress"] for p in requests["set_progress"]]
    assert progress == sorted(progress) and progress[-1] == 1.0 and len(progress) >= 4
    assert "reload_dataset" in requests
    shown = requests["show_output"][0]["results"]["summary"]
    assert "Round 0" in shown and "Eval share" in shown
    assert "Images embedded: 60" in shown  # the corrupt one failed: not embedded
    bad_sample = ds.one(fo.ViewField("filepath") == str(bad))
    assert bad_sample.bubblefence_error and bad_sample.split is None
    assert not set(bad_sample.tags) & set(bfo.SPLIT_TAGS)
    assert len(ds.exists("split")) == 60
    assert len(ds.exists(bfo.EMBEDDING_FIELD)) == 60
    assert ds.get_field(bfo.EMBEDDING_FIELD).info["model_name"] == tiny_clip_dir
    tags = ds.count_sample_tags()
    counts = ds.count_values("split")
    for s in bfo.SPLIT_TAGS:
        assert tags.get(s, 0) == counts.get(s, 0)


def test_incremental_rounds_via_operator_embed_only_new(
    image_dataset, tiny_clip_dir, image_factory
):
    ds = image_dataset
    op = foo.get_operator(SPLIT)
    op(ds, model_name=tiny_clip_dir)
    first = dict(zip(*ds.values(["id", "split"]), strict=True))
    emb_before = dict(zip(*ds.values(["id", bfo.EMBEDDING_FIELD]), strict=True))
    for k in (1, 2):
        ds.add_samples([fo.Sample(filepath=p) for p in image_factory(20, seed=10 + k)])
        op(ds, model_name=tiny_clip_dir)
        now = dict(zip(*ds.values(["id", "split"]), strict=True))
        assert all(now[i] == s for i, s in first.items())
        assert len(ds.match(fo.ViewField("bubblefence_round") == k)) == 20
    ids, vectors = ds.select(list(emb_before)).values(["id", bfo.EMBEDDING_FIELD])
    for sid, vec in zip(ids, vectors, strict=True):
        assert (vec == emb_before[sid]).all()  # never recomputed
    result = op(ds, model_name=tiny_clip_dir)
    assert "Nothing new" in operator_requests(result)["notify"][0]["message"]


def test_split_delegated_with_field_and_selected_samples(field_dataset):
    ds = field_dataset
    selected = ds.take(40, seed=3).values("id")
    result = foo.execute_operator(
        SPLIT,
        ctx={
            "dataset": ds,
            "selected": selected,
            "view_target": "SELECTED_SAMPLES",
            "params": {"embeddings": "field", "embeddings_field": "emb", "eval_ratio": 0.3},
            "request_delegation": True,
        },
    )
    assert result.delegated
    assert len(ds.exists("split")) == 0  # queued, not run
    service = DelegatedOperationService()
    service.execute_queued_operations(dataset_name=ds.name)
    op = service.get(result.result["id"])
    assert op.run_state == "completed", op.run_state
    assert op.result.result["result"]["n_assigned"] == 40
    assert escape_markdown("Round 0: 40 samples assigned") in op.result.result["summary"]
    assert sorted(ds.exists("split").values("id")) == sorted(selected)
    assert bfo.state_info(ds)["config"]["eval_ratio"] == 0.3


def test_sdk_call_delegated(field_dataset):
    op = foo.get_operator(SPLIT)
    assert op(field_dataset, embeddings_field="emb", delegate=True).delegated
    DelegatedOperationService().execute_queued_operations(dataset_name=field_dataset.name)
    assert len(field_dataset.exists("split")) == 200


def test_out_of_range_parameter_is_named(field_dataset):
    with pytest.raises(ExecutionError, match="eval_ratio"):
        foo.get_operator(SPLIT)(field_dataset, embeddings_field="emb", eval_ratio=1.5)


def test_wrong_dimension_field_refused_by_operator(field_dataset):
    ds = field_dataset
    op = foo.get_operator(SPLIT)
    op(ds.limit(100), embeddings_field="emb")
    ds.exists("split", False).set_values("emb", [[0.5] * 7] * 100)
    with pytest.raises(ExecutionError, match="emb"):
        op(ds, embeddings_field="emb")


def test_concurrent_operator_run_is_refused(field_dataset):
    with runs.RunLock(field_dataset):
        with pytest.raises(ExecutionError, match="in progress"):
            foo.get_operator(SPLIT)(field_dataset, embeddings_field="emb")


def test_reset_operator(field_dataset, tiny_clip_dir):
    ds = field_dataset
    foo.get_operator(SPLIT)(ds, embeddings_field="emb")
    with pytest.raises(ExecutionError, match="confirm"):
        foo.execute_operator(RESET, ctx={"dataset": ds, "params": {"confirm": False}})
    assert ds.has_field("split")
    result = foo.get_operator(RESET)(ds)
    assert result.result["result"]["n_samples_untagged"] == 200
    assert "untagged 200 samples" in result.result["summary"]  # no punctuation to escape
    assert not ds.has_field("split") and ds.list_runs() == []
    assert not set(ds.count_sample_tags()) & set(bfo.SPLIT_TAGS)
    # A clean slate unless asked otherwise, in the form as from Python.
    assert not ds.has_field(bfo.EMBEDDING_FIELD)
    assert form(ds, RESET, {})["keep_embeddings"]["default"] is False


def test_export_operator_round_trip(image_dataset, tiny_clip_dir, tmp_path, fo_datasets):
    ds = image_dataset
    foo.get_operator(SPLIT)(ds, model_name=tiny_clip_dir)
    out = tmp_path / "out"
    result = foo.get_operator(EXPORT)(ds, str(out))
    assert (out / "manifest.csv").exists()
    total = 0
    # Its progress streams to the App (a tester saw none): the result comes with the output.
    shown = operator_requests(result)["show_output"][0]["results"]["result"]
    assert [p["progress"] for p in operator_requests(result)["set_progress"]][-1] == 1.0
    for name, n in shown["counts"].items():
        if not n:
            continue
        back = fo.Dataset.from_dir(str(out / name), dataset_type=fo.types.FiftyOneDataset)
        fo_datasets.append(back)
        assert sorted(back.values("id")) == sorted(ds.match_tags(name).values("id"))
        assert set(back.distinct("split")) == {name}
        back.delete()  # its media lie in `out`: an overwrite would be refused
        total += n
    assert total == 60
    with pytest.raises(ExecutionError, match="(?i)not empty"):
        foo.get_operator(EXPORT)(ds, str(out))
    again = foo.get_operator(EXPORT)(ds, str(out), overwrite=True, names=["train"])
    assert list(operator_requests(again)["show_output"][0]["results"]["result"]["counts"]) == [
        "train"
    ]
    # Delegated, its progress ends done (it stayed at 0 %; found by a stress test).
    queued = foo.get_operator(EXPORT)(ds, str(tmp_path / "later"), delegate=True)
    service = DelegatedOperationService()
    service.execute_queued_operations(dataset_name=ds.name)
    op = service.get(queued.result["id"])
    assert op.run_state == "completed" and op.status.progress == 1.0


# --------------------------------------------------------------------------- the base


def test_every_operator_shares_the_base_and_documents_its_python_call():
    from operators import OPERATORS
    from operators.base import BubbleFenceOperator

    uris = {op.uri for op in OperatorRegistry().list_operators()}
    for cls in OPERATORS:
        assert issubclass(cls, BubbleFenceOperator), cls
        assert f"{PLUGIN}/{cls.name}" in uris
        doc = cls.__call__.__doc__ or ""
        assert "Example usage::" in doc and "Args:" in doc, cls.name


def test_a_library_error_is_an_error_notice_and_writes_nothing(field_dataset):
    ds = field_dataset
    params = {"embeddings": "field", "embeddings_field": "emb"}
    with runs.RunLock(ds):  # the library refuses a second run on the dataset
        result = run_unraised(SPLIT, {"dataset": ds, "params": params})
    assert "in progress" in result.error_message
    requests = operator_requests(result)
    (notice,) = requests["notify"]
    assert notice["variant"] == "error" and "in progress" in notice["message"]
    assert requests["show_output"][0]["results"]["summary"].startswith("**Failed:**")
    assert "reload_dataset" not in requests
    assert not ds.has_field("split") and ds.list_runs() == []

    # An operator that returns its result (no progress stream) fails the same way.
    foo.get_operator(SPLIT)(ds, embeddings_field="emb")
    with runs.RunLock(ds):
        result = run_unraised(RESET, {"dataset": ds, "params": {"confirm": True}})
    assert operator_requests(result)["notify"][0]["variant"] == "error"
    assert result.result is None and len(ds.exists("split")) == 200


def test_unknown_parameters_are_refused_before_anything_runs(field_dataset, tmp_path):
    ds = field_dataset
    params = {"export_dir": {"absolute_path": str(tmp_path / "x")}, "overwrit": True}
    with pytest.raises(ExecutionError, match="'overwrit' \\(did you mean 'overwrite'\\?\\)"):
        foo.execute_operator(EXPORT, ctx={"dataset": ds, "params": params})
    assert not (tmp_path / "x").exists()
    # From Python, a misspelt knob is refused before a run is queued for a worker.
    with pytest.raises(ValueError, match="did you mean 'eval_ratio'"):
        foo.get_operator(SPLIT)(ds, embeddings_field="emb", eval_ration=0.3, delegate=True)
    assert DelegatedOperationService().execute_queued_operations(dataset_name=ds.name) == []
    # Knobs hidden in the folded advanced section are known.
    foo.get_operator(SPLIT)(ds, embeddings_field="emb", lid_k=10)
    assert bfo.state_info(ds)["config"]["lid_k"] == 10
    # What the App adds when a panel's button opens the operator is not the user's.
    opened_by_panel = {"panel_id": "p1", "panel_state": {"shown": {}}, "path": "actions.export"}
    params = {"export_dir": {"absolute_path": str(tmp_path / "y")}, "export_media": False}
    params.update(opened_by_panel)
    foo.execute_operator(EXPORT, ctx={"dataset": ds, "params": params})
    assert (tmp_path / "y" / "manifest.csv").exists()
    params = {"embeddings_field": "emb", **opened_by_panel}
    foo.execute_operator(SPLIT, ctx={"dataset": ds, "params": params})


def test_python_call_on_a_view_runs_there_and_ends_like_the_app(field_dataset):
    ds = field_dataset
    result = foo.get_operator(SPLIT)(ds.limit(50), embeddings_field="emb")
    assert len(ds.exists("split")) == 50
    requests = operator_requests(result)
    endings = ["reload_dataset", "set_color_scheme", "show_output", "notify"]
    assert list(requests)[-4:] == endings
    shown = requests["show_output"][0]
    assert shown["outputs"]["type"]["properties"]["summary"]["view"]["label"] == (
        "BubbleFence round"
    )
    assert set(shown["results"]) == {"summary", "result"}
    assert shown["results"]["result"]["n_assigned"] == 50
    assert requests["notify"][0]["variant"] == "success"


def test_a_round_run_in_the_app_shows_its_split_colours_there(field_dataset):
    # The App reads a dataset's stored colour scheme only when it loads the dataset: a
    # round that stored the split colours sends them to the open App.
    ds = field_dataset
    requests = operator_requests(foo.get_operator(SPLIT)(ds.limit(50), embeddings_field="emb"))
    (scheme,) = requests["set_color_scheme"]
    assert scheme == bfmap.color_scheme_params(ds)
    assert scheme["color_by"] == "value"
    fields = {entry["path"]: entry["valueColors"] for entry in scheme["fields"]}
    split_colors = {v: bfmap.SPLIT_COLORS[v] for v in bfo.SPLIT_VALUES}
    assert {c["value"]: c["color"] for c in fields["split"]} == split_colors
    assert {"value": "test", "color": bfmap.SPLIT_COLORS["test"]} in fields["tags"]
    # A run that assigned nothing changed no colour.
    again = foo.get_operator(SPLIT)(ds.limit(50), embeddings_field="emb")
    assert "set_color_scheme" not in operator_requests(again)
    # Nor does reset: the split colours stay in the scheme for the next split.
    assert "set_color_scheme" not in operator_requests(foo.get_operator(RESET)(ds))
    assert ds.app_config.color_scheme.fields == scheme["fields"]


def test_split_form_flags_a_source_other_than_the_one_the_state_was_built_from(field_dataset):
    bfo.split(field_dataset, embeddings_field="emb")
    props = form(field_dataset, SPLIT, {"embeddings": "model"})
    assert props["embeddings"]["invalid"]
    assert "built from the field 'emb'; reset to compute" in props["embeddings"]["error_message"]
    props = form(field_dataset, SPLIT, {"embeddings": "field", "embeddings_field": "emb"})
    assert not props["embeddings"].get("invalid")
    # The field deleted since (found by a tester: the form said only "embeddings='field'
    # is not one of the choices: 'model'"): named, with what to do.
    field_dataset.delete_sample_field("emb")
    props = form(field_dataset, SPLIT, {})
    assert props["embeddings"]["invalid"]
    assert props["embeddings"]["error_message"].startswith(
        "The state was built from the field 'emb', which this dataset no longer has"
    )
    assert {c["value"] for c in props["embeddings"]["view"]["choices"]} == {"model", "field"}


def test_split_form_flags_a_knob_out_of_its_range_with_the_library_message(field_dataset):
    # The form's min/max are closed: an eval share of 0 passes them, so the form asks the
    # knob table, whose open bound refuses it, before the run would.
    props = form(field_dataset, SPLIT, {"eval_ratio": 0, "validation_ratio": 0.5})
    assert props["eval_ratio"]["invalid"]
    assert props["eval_ratio"]["error_message"] == "eval_ratio=0 must be a number in (0, 1)"
    assert not props["validation_ratio"].get("invalid")
    assert not form(field_dataset, SPLIT, {"eval_ratio": 0.3})["eval_ratio"].get("invalid")
    # An advanced knob out of range with the section folded (from Python): shown and
    # flagged, and a delegated run refused before it is queued (it failed on the worker).
    props = form(field_dataset, SPLIT, {"lid_k": 0})
    assert props["lid_k"]["invalid"] and "lid_k=0" in props["lid_k"]["error_message"]
    assert "lid_k" not in form(field_dataset, SPLIT, {})
    with pytest.raises(ExecutionError, match="lid_k"):
        foo.get_operator(SPLIT)(field_dataset, embeddings_field="emb", lid_k=0, delegate=True)
    assert DelegatedOperationService().list_operations(dataset_name=field_dataset.name) == []


def test_a_value_that_is_none_of_a_dropdowns_choices_is_named_with_them(field_dataset):
    # FiftyOne's own check said only "Invalid enum value" (found by a stress test).
    ds = field_dataset
    ds.set_values("kind", ["a"] * len(ds))
    params = {"embeddings": "field", "embeddings_field": "emb", "label_field": "knd"}
    with pytest.raises(ExecutionError, match=r"label_field='knd' is not one of the choices"):
        foo.execute_operator(SPLIT, ctx={"dataset": ds, "params": params})
    props = form(ds, SPLIT, {"embeddings": "field", "embeddings_field": "embs"})
    assert props["embeddings_field"]["error_message"] == (
        "embeddings_field='embs' is not one of the choices: 'emb'"
    )
    assert not ds.has_field("split")


def test_a_label_path_inside_a_field_is_a_choice_as_the_python_api_takes_it(field_dataset):
    # Found by a stress test: "clf.label" was "not one of the choices" in the form, which
    # then kept refusing the field a Python round had remembered.
    ds = field_dataset
    ds.set_values("clf", [fo.Classification(label=f"c{i % 3}") for i in range(len(ds))])
    params = {"embeddings": "field", "embeddings_field": "emb", "label_field": "clf.label"}
    props = form(ds, SPLIT, params)
    assert not props["label_field"].get("invalid")
    assert "clf.label" in props["label_field"]["type"]["values"]
    bad = form(ds, SPLIT, {**params, "label_field": "clf.lable"})
    assert "not one of the choices" in bad["label_field"]["error_message"]
    foo.execute_operator(SPLIT, ctx={"dataset": ds, "params": params})
    assert bfo.state_info(ds)["label_field"] == "clf.label"


def test_split_form_defaults_to_the_model_of_kept_embeddings(field_dataset):
    # A reset that kept the embeddings: a first round embeds with their model.
    ds = field_dataset
    ds.clone_sample_field("emb", bfo.EMBEDDING_FIELD)
    field = ds.get_field(bfo.EMBEDDING_FIELD)
    field.info = {"model_name": "efficientnet-lite0", "dim": 64}
    field.save()
    props = form(ds, SPLIT, {"embeddings": "model"})
    assert props["model_name"]["default"] == "efficientnet-lite0"


@pytest.mark.parametrize("name", ["bubblefence_split", "bubblefence_sample", "bubblefence_embed"])
def test_a_form_on_a_dataset_it_cannot_work_on_says_so_before_execute(fo_datasets, name):
    # Found by a stress test: the split form said "First round: bubbles will be created"
    # on a video dataset; only Execute refused.
    video = fo.Dataset()
    fo_datasets.append(video)
    video.add_sample(fo.Sample(filepath="/nonexistent/clip.mp4"))
    props = form(video, f"{PLUGIN}/{name}", {})
    assert list(props) == ["refused"]
    assert "media type 'video'" in props["refused"]["error_message"]


PICK = {"strategy": "diverse", "embeddings_field": "emb", "tag": "p", "count": 5, "seed": 0}
EMBED = {
    "model_name": "/nonexistent/model",
    "embeddings_field": "bubblefence_embedding",
    "mode": "run",
    "num_shards": 1,
    "shard_index": 0,
    "batch_size": 8,
    "device": "cpu",
}


def _written(ds) -> tuple:
    """What a run could write: tags, fields, runs."""
    return (ds.count_sample_tags(), sorted(ds.get_field_schema()), ds.list_runs())


@pytest.mark.parametrize(
    "op, params, named",
    [
        ("bubblefence_sample", {"count": 2.5}, "count=2.5 must be an integer in [1, "),
        ("bubblefence_sample", {"k": 0}, "k=0 must be an integer in [1, "),
        ("bubblefence_sample", {"seed": float("nan")}, "seed=nan must be an integer in [0, "),
        ("bubblefence_sample", {"k": "x"}, "k='x' must be an integer in [1, "),
        ("bubblefence_report", {"max_queries": 2.5}, "max_queries=2.5 must be an integer"),
        ("bubblefence_report", {"seed": 2**70}, "must be an integer in [0, 2**63 - 1]"),
        ("bubblefence_report", {"eval_ratio": 1.0}, "eval_ratio must be a number in (0, 1)"),
        ("bubblefence_embed", {"num_shards": 2.5}, "num_shards=2.5 must be an integer"),
        ("bubblefence_embed", {"num_shards": float("inf")}, "num_shards=inf must be an integer"),
    ],
)
def test_a_whole_number_given_as_a_decimal_or_nan_is_refused_naming_it(
    field_dataset, op, params, named
):
    """The operators pass numbers on as given: `int()` cut 2.5 to 2 and ran (writing the
    pick, the vectors or the report), and NaN ended in a bare conversion error."""
    ds = field_dataset
    foo.get_operator(SPLIT)(ds, embeddings_field="emb")
    base = {
        "bubblefence_sample": PICK,
        "bubblefence_report": {"split_source": "split", "embeddings_field": "emb"},
        "bubblefence_embed": EMBED,
    }[op]
    before = _written(ds)
    result = run_unraised(f"{PLUGIN}/{op}", {"dataset": ds, "params": {**base, **params}})
    assert named in (result.error_message or "")
    assert _written(ds) == before


def test_forms_given_values_of_the_wrong_type_flag_them_instead_of_failing(field_dataset):
    """A list where a name is due, a string where a count is: the form marks the input
    (the App shows it, a delegated run is not queued), it does not raise."""
    ds = field_dataset
    pick = {**PICK, "tag": ["x"]}
    with pytest.raises(ExecutionError, match="Path: tag. Reason: tag must be a non-empty str"):
        foo.execute_operator(f"{PLUGIN}/bubblefence_sample", ctx={"dataset": ds, "params": pick})
    embed = {**EMBED, "num_shards": "3", "embeddings_field": ["x"]}
    with pytest.raises(ExecutionError, match="Path: embeddings_field"):
        foo.execute_operator(f"{PLUGIN}/bubblefence_embed", ctx={"dataset": ds, "params": embed})
    assert not ds.has_field("bubblefence_embedding") and ds.count_sample_tags() == {}


def test_the_export_form_refuses_a_file_as_its_folder_before_a_run_is_queued(
    field_dataset, tmp_path
):
    ds = field_dataset
    foo.get_operator(SPLIT)(ds, embeddings_field="emb")
    a_file = tmp_path / "notes.txt"
    a_file.write_text("kept")
    params = {"export_dir": {"absolute_path": str(a_file)}, "export_media": False}
    props = form(ds, EXPORT, params)
    assert props["export_dir"]["invalid"] and "A file" in props["export_dir"]["error_message"]
    with pytest.raises(ExecutionError, match="A file, not a folder"):
        foo.execute_operator(
            EXPORT, ctx={"dataset": ds, "params": params, "request_delegation": True}
        )
    assert DelegatedOperationService().execute_queued_operations(dataset_name=ds.name) == []
    assert a_file.read_text() == "kept"


def test_a_field_of_two_vector_lengths_half_and_half_is_refused_before_a_split(field_dataset):
    """Half 16-d, half 8-d: two models' vectors, not a few broken rows. It was split as
    8-d (the smaller length won the tie) with the 16-d half left out as errors."""
    ds = field_dataset
    half = ds.limit(100)
    sixteen = half.values("emb")
    half.set_values("emb", [v[:8] for v in sixteen])
    before = _written(ds)
    result = run_unraised(
        SPLIT, {"dataset": ds, "params": {"embeddings": "field", "embeddings_field": "emb"}}
    )
    assert "100 of the 200 vectors have length" in result.error_message
    assert _written(ds) == before
    # A few rows of another length stay per-sample errors.
    half.set_values("emb", sixteen)
    ds.take(5, seed=1).set_values("emb", [[0.5] * 8] * 5)
    foo.get_operator(SPLIT)(ds, embeddings_field="emb")
    assert len(ds.exists("bubblefence_error")) == 5


def test_an_export_of_splits_by_name_before_any_split_says_to_split_first(field_dataset, tmp_path):
    params = {
        "export_dir": {"absolute_path": str(tmp_path / "out")},
        "names": ["train", "validation", "test"],  # as the App's form sends them
        "export_media": False,
    }
    result = run_unraised(EXPORT, {"dataset": field_dataset, "params": params})
    assert "Run the BubbleFence split first" in result.error_message
    assert not (tmp_path / "out").exists()


def test_embedding_an_empty_dataset_says_there_are_no_samples(fo_datasets):
    ds = fo.Dataset()
    fo_datasets.append(ds)
    report = bfo.embed(ds, model="/nonexistent/model")
    # One run over every sample is no shard (an App walk: "Shard 1/1: embedded ...").
    assert report.message == "Nothing to embed, there are no samples"
    sharded = bfo.embed(ds, model="/nonexistent/model", num_shards=2, shard_index=1)
    assert sharded.message == "Shard 2/2: nothing to embed, there are no samples"


def test_a_hidden_model_given_wrong_with_a_field_is_flagged_before_a_run_is_queued(
    field_dataset,
):
    ds = field_dataset
    params = {"embeddings": "field", "embeddings_field": "emb", "model_name": ["x"]}
    with pytest.raises(ExecutionError, match="Path: model_name"):
        foo.execute_operator(
            SPLIT, ctx={"dataset": ds, "params": params, "request_delegation": True}
        )
    assert DelegatedOperationService().execute_queued_operations(dataset_name=ds.name) == []
    assert "model_name" not in form(ds, SPLIT, {**params, "model_name": None})


def test_more_shards_than_samples_are_refused_before_any_is_queued(field_dataset, tiny_clip_dir):
    """2**40 shards were queued one by one until the process was killed."""
    ds = field_dataset
    with pytest.raises(
        ValueError, match=r"num_shards=1099511627776 must be an integer in \[1, 200\]"
    ):
        bfo.queue_shards(ds, 2**40, model=str(tiny_clip_dir))
    assert DelegatedOperationService().execute_queued_operations(dataset_name=ds.name) == []


def test_an_export_folder_given_as_text_runs_as_the_file_explorers_value_does(
    field_dataset, tmp_path
):
    """`execute_operator` with a plain path: FiftyOne's check of the file input failed
    on it ("'str' object has no attribute 'get'")."""
    ds = field_dataset
    foo.get_operator(SPLIT)(ds, embeddings_field="emb")
    params = {"export_dir": str(tmp_path / "out"), "export_media": False}
    foo.execute_operator(EXPORT, ctx={"dataset": ds, "params": params})
    assert (tmp_path / "out" / "manifest.csv").exists()


def test_the_export_operator_exports_split_names_as_splits(field_dataset, tmp_path):
    """The form's default names are the three splits: they are checked against the
    stored split as the command line's are (the operator passed them as tags, and
    exported a sample tagged train and test into both folders)."""
    ds = field_dataset
    bfo.split(ds, embeddings_field="emb")
    ds.match_tags("test").limit(2).tag_samples("train")
    params = {"export_dir": str(tmp_path / "out"), "export_media": False}
    params["names"] = ["train", "validation", "test"]  # as the App's form sends them
    result = run_unraised(EXPORT, {"dataset": ds, "params": params})
    assert "2 samples carry the tags of two or more splits" in result.error_message
    assert not (tmp_path / "out").exists()


def test_a_failed_report_shows_the_error_without_empty_outputs(field_dataset, tmp_path):
    """Found by a tester: under the error, the dialog showed the report's outputs empty
    ("Audit: No data provided", "HTML report: No value provided")."""
    field_dataset.take(50, seed=0).tag_samples("test")  # a split the form accepts
    not_a_folder = tmp_path / "a-file"
    not_a_folder.write_text("")
    params = {"html_path": str(not_a_folder / "report.html")}  # fails when it runs
    result = run_unraised(
        f"{PLUGIN}/bubblefence_report", {"dataset": field_dataset, "params": params}
    )
    assert "a-file" in result.error_message
    (shown,) = operator_requests(result)["show_output"]
    assert set(shown["outputs"]["type"]["properties"]) == {"summary"}
    assert shown["results"]["summary"].startswith("**Failed:**")
