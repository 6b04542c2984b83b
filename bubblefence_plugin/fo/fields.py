"""Sample fields and tags: the names BubbleFence writes, bulk writes of the split mirror,
label and group fields, and the checks on a collection.

This is also the one module that touches FiftyOne internals (underscore names), each in
a small helper below with the reason no public call does the job; the rest of the
package goes through these helpers.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

import fiftyone as fo
import fiftyone.core.clips as foclips
import fiftyone.core.collections as foc
import fiftyone.core.media as fom
import fiftyone.core.patches as fopatches
import fiftyone.core.validation as fov
import fiftyone.core.video as fovideo
import fiftyone.server.view as fosv
import numpy as np

from ..text import counted

EMBEDDING_FIELD = "bubblefence_embedding"
SPLIT_FIELD = "split"
ANCHOR_FIELD = "anchor_id"
SHELL_FIELD = "bubblefence_shell"
ROUND_FIELD = "bubblefence_round"
DUPLICATE_FIELD = "duplicate_of"
ERROR_FIELD = "bubblefence_error"
SPLIT_TAGS = ("train", "validation", "test")
DUPLICATE_SPLIT = "duplicate"  # the split field of a duplicate set aside
SPLIT_VALUES = (*SPLIT_TAGS, DUPLICATE_SPLIT)
# Names read as a split in any case and spacing: the audit's split sources, a first
# round's refusal of a split of the user's, the tags a pick may not take.
SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "validation": "validation",
    "val": "validation",
    "valid": "validation",
    "dev": "validation",
    "test": "test",
    "testing": "test",
}
EXCLUDED_TAG = "excluded"
# Why a sample was excluded (`curate.exclude`); it goes when the tag goes.
REASON_FIELD = "bubblefence_exclusion_reason"

# Declared up front so the App sidebar shows them with the right types, and so a
# user field of the same name with another type is refused instead of clobbered.
RESULT_FIELDS: dict[str, type] = {
    SPLIT_FIELD: fo.StringField,
    ANCHOR_FIELD: fo.IntField,
    SHELL_FIELD: fo.StringField,
    ROUND_FIELD: fo.IntField,
    DUPLICATE_FIELD: fo.StringField,
    ERROR_FIELD: fo.StringField,
}
# The columns of an assignment table (`assignment_table`), in the order of its fields.
ASSIGNMENT_COLUMNS = ("split", "anchor_id", "shell", "round", "duplicate_of")

# Views whose samples are generated from the dataset's (patches, frames, clips): their
# "samples" are not the dataset's, so there is nothing of theirs to split.
_GENERATED_VIEWS = (
    fopatches.PatchesView,
    fopatches.EvaluationPatchesView,
    fovideo.FramesView,
    foclips.ClipsView,
)
# Label list types: a sample carries the labels of all the objects in the list.
_LABEL_LISTS = {
    fo.Classifications: "classifications",
    fo.Detections: "detections",
    fo.Polylines: "polylines",
    fo.Keypoints: "keypoints",
}
_SCALAR_FIELDS = (fo.StringField, fo.IntField, fo.BooleanField, fo.ObjectIdField)
# Sample fields never offered as labels or groups (our own results, paths, split tags).
_NOT_LABELS = {"id", "filepath", "tags", "metadata", ERROR_FIELD, EMBEDDING_FIELD}
# Ids per query or view: its id list must stay far under MongoDB's 16 MB per command
# (about 800,000 ids; a view selecting the 1M samples of a first round failed with
# DocumentTooLarge).
MAX_IDS_PER_QUERY = 50_000


# --------------------------------------------------------------------------- FiftyOne internals


def root_dataset(samples: foc.SampleCollection) -> fo.Dataset:
    """The dataset a view (or the dataset itself) belongs to.

    FiftyOne's ``_root_dataset``: the public route, ``fo.load_dataset(samples.dataset_name)``,
    fails for a dataset that was deleted or never named persistent in another process.

    Args:
        samples: a dataset or view
    """
    return samples._root_dataset


def dataset_id(dataset: fo.Dataset) -> Any:
    """The dataset's database id, which keys its ExecutionStore (FiftyOne's operators pass
    ``ctx.dataset._doc.id`` the same way; the dataset exposes no public id).

    Args:
        dataset: a dataset
    """
    return dataset._doc.id


def is_filtered(samples: foc.SampleCollection) -> bool:
    """Whether ``samples`` is a view with stages rather than the whole dataset (a view
    with no stages selects every sample; only its private ``_stages`` tells).

    Args:
        samples: a dataset or view
    """
    return isinstance(samples, fo.DatasetView) and len(samples._stages) > 0


def serialized_view(samples: foc.SampleCollection) -> list[dict[str, Any]]:
    """The view's stages as FiftyOne serializes them into an operator request (the form
    ``execute_operator`` builds with the same private ``_serialize``).

    Args:
        samples: a dataset or view
    """
    view = samples if isinstance(samples, fo.DatasetView) else samples.view()
    return view._serialize()


def record_exported_media(exporter: Any) -> dict[str, str]:
    """Makes a FiftyOne dataset exporter note the file it writes for each media path:
    returns the dict the export then fills, source path -> the path the exporter chose
    (a copy, a moved file or a symlink; the source path itself where it writes no media).

    Exporters name their files themselves (``name-2.png`` for a second ``name.png``, a
    folder per class, ``images/<split>/``) and no public call tells the name afterwards.
    Each writes media through the ``MediaExporter`` it makes in ``setup`` and keeps as
    its private ``_media_exporter``, whose public ``export`` returns the path it wrote:
    that answer is recorded. An exporter without one records nothing.

    Args:
        exporter: a ``fiftyone.utils.data.DatasetExporter``, not yet set up
    """
    written: dict[str, str] = {}
    setup = exporter.setup

    def setup_recording() -> None:
        setup()
        media_exporter = getattr(exporter, "_media_exporter", None)
        if media_exporter is None:
            return
        export = media_exporter.export

        def export_recording(media_or_path: Any, outpath: str | None = None) -> tuple[str, str]:
            path_and_uuid = export(media_or_path, outpath=outpath)
            if isinstance(media_or_path, str):  # not an image made in memory (a patch)
                written[media_or_path] = path_and_uuid[0]
            return path_and_uuid

        media_exporter.export = export_recording

    exporter.setup = setup_recording
    return written


# --------------------------------------------------------------------------- collections


def app_view(dataset: fo.Dataset, request_params: Mapping[str, Any]) -> foc.SampleCollection:
    """The view the App's grid shows for a request's parameters: its view (a saved view's
    stages, by name) and its sidebar filters, without the extended selection. FiftyOne's
    `ExecutionContext.view` of a saved view leaves the filters out: a panel counted and
    drew samples the grid hid, and an operator on the current view split them (found by
    a tester in the App).

    Args:
        dataset: the request's dataset
        request_params: an execution context's ``request_params``
    """
    view_name, stages = request_params.get("view_name"), request_params.get("view")
    if view_name:
        stages = dataset.load_saved_view(view_name)._serialize()
    return fosv.get_view(dataset, stages=stages, filters=request_params.get("filters"))


def check_collection(samples: foc.SampleCollection) -> fo.Dataset:
    """The dataset of ``samples``, after checking that BubbleFence can split it: a dataset
    or view of a flat image dataset, not a patches/frames/clips view nor one grouped by
    ``group_by``.

    Args:
        samples: a dataset or view

    Raises:
        ValueError: if ``samples`` is anything else
    """
    dataset = check_samples(samples)
    if getattr(samples, "_is_dynamic_groups", False):
        # FiftyOne reads such a view one sample per group: the rest would go unsplit.
        raise ValueError(
            "This view groups its samples (group_by), and BubbleFence reads one sample "
            "per group of such a view. Pass the view before its group_by stage (or the "
            "dataset), with group_field set to the field it grouped by: the samples of "
            "one group then never straddle train and eval"
        )
    if dataset.media_type == fom.GROUP:
        raise ValueError(
            f"{dataset.name!r} is a grouped dataset; BubbleFence works on flat image "
            "datasets. Flatten its image slices with dataset.select_group_slices("
            "media_type='image').clone() and use that (split it with group_field='group': "
            "the samples of one group then never straddle train and eval)"
        )
    if dataset.media_type is not None:  # a new, empty dataset has no media type yet
        try:
            fov.validate_image_collection(dataset)
        except ValueError as e:
            raise ValueError(
                f"BubbleFence works on image datasets; {dataset.name!r} has media type "
                f"{dataset.media_type!r}"
            ) from e
    return dataset


def check_samples(samples: foc.SampleCollection) -> fo.Dataset:
    """The dataset of ``samples``, after checking that they are samples: a dataset or a
    view of one, not a patches/frames/clips view (whose rows are objects or frames).

    Args:
        samples: a dataset or view
    """
    if not isinstance(samples, foc.SampleCollection):
        raise ValueError(f"expected a FiftyOne dataset or view, got {type(samples).__name__}")
    if isinstance(samples, _GENERATED_VIEWS):
        raise ValueError(
            "BubbleFence works on samples; pass the dataset or a view of its samples, not "
            "a patches/frames/clips view"
        )
    return root_dataset(samples)


def declare_fields(dataset: fo.Dataset, fields: Mapping[str, type]) -> None:
    """Adds each missing field with its type; refuses a field of the same name and
    another type rather than clobbering the user's data.

    Args:
        dataset: a dataset
        fields: field name -> FiftyOne field type, e.g. `RESULT_FIELDS`
    """
    check_declarable(dataset, fields)
    for name, ftype in fields.items():
        if dataset.get_field(name) is None:
            dataset.add_sample_field(name, ftype)


def check_declarable(dataset: fo.Dataset, fields: Mapping[str, type]) -> None:
    """Refuses, writing nothing, a field of one of these names and another type.

    Args:
        dataset: a dataset
        fields: field name -> FiftyOne field type
    """
    for name, ftype in fields.items():
        field = dataset.get_field(name)
        if field is not None and not isinstance(field, ftype):
            raise ValueError(
                f"dataset {dataset.name!r} already has a field {name!r} of type "
                f"{type(field).__name__}; BubbleFence writes a field of type "
                f"{ftype.__name__} there. Rename or delete that field first"
            )


def role_of(value: Any) -> str:
    """train / validation / test for a split name or alias (`SPLIT_ALIASES`, any case and
    spacing), "" otherwise.

    Args:
        value: a split field's value or a tag
    """
    if not isinstance(value, str):
        return ""
    return SPLIT_ALIASES.get(value.strip().lower(), "")


def roles_from_tags(tag_lists: Sequence[Sequence[str] | None]) -> tuple[np.ndarray, int]:
    """(the split role of each sample's tags, "" for none or several; how many carry
    several): a split read from tags (`role_of`), as the audit and picks read it.

    Args:
        tag_lists: each sample's tags
    """
    roles, conflicts = [], 0
    for tags in tag_lists:
        found = {role_of(t) for t in tags or ()} - {""}
        if len(found) > 1:
            conflicts += 1
        roles.append(found.pop() if len(found) == 1 else "")
    return np.asarray(roles, dtype=object), conflicts


def refuse_values_not_ours(dataset: fo.Dataset) -> None:
    """Before a dataset's first round: refuses when a field a round writes (``split``,
    ``anchor_id``, ``duplicate_of``...) already holds values, or samples carry a split
    tag (``train``, ``validation``, ``test``: how FiftyOne's zoo datasets ship their
    splits; or an alias the audit reads, ``val``, ``training``..., `role_of`). Without
    a state no round of ours wrote them (a round commits its state before its fields and
    tags), so they are the user's, and a round would replace them.

    Args:
        dataset: a dataset without a BubbleFence state
    """
    names = [n for n in RESULT_FIELDS if n != ERROR_FIELD and dataset.has_field(n)]
    counts = dataset.aggregate([fo.Count(n) for n in names]) if names else []
    held = {n: c for n, c in zip(names, counts, strict=True) if c}
    tag_counts = dataset.count_sample_tags()
    tagged = {t: c for t, c in sorted(tag_counts.items()) if c and role_of(t)}
    if tagged:
        listed = ", ".join(f"{t!r} ({counted(c, 'sample')})" for t, c in tagged.items())
        names = tuple(tagged)
        raise ValueError(
            f"dataset {dataset.name!r} has samples tagged {listed} that BubbleFence did "
            "not tag, and a BubbleFence split would write its own split tags beside them "
            "(a report of the tags would then read two splits). Keep that split in a "
            f"field first and remove the tags, e.g. in Python: for t in {names!r}: view = "
            "dataset.match_tags(t); view.set_values('original_split', [t] * len(view)); "
            f"then dataset.untag_samples({list(names)!r}). The report can then audit it by "
            "that field"
        )
    if held:
        name, count = next(iter(held.items()))
        # Only a split of the user's can be audited; other fields are just kept.
        audit = "; the report can then audit that split by its new name"
        raise ValueError(
            f"dataset {dataset.name!r} has values in field {name!r} ({count} samples) "
            f"that BubbleFence did not write, and a BubbleFence split would overwrite them"
            + (f" (also {', '.join(map(repr, list(held)[1:]))})" if len(held) > 1 else "")
            + f". Rename the field first, e.g. dataset.rename_sample_field({name!r}, "
            f"'original_{name}')" + (audit if name == SPLIT_FIELD else "")
        )


def refuse_splits_of_new_samples(dataset: fo.Dataset, new_ids: list[str]) -> None:
    """Before a later round: refuses when samples it would split (``new_ids``, in no
    state) already have a ``split`` value or a split tag. No round of ours wrote them (a
    round commits its state before its fields; an excluded sample's are cleared), so they
    came with the samples (merged from another dataset, a split shipped with the data)
    and the round would overwrite them, as `refuse_values_not_ours` guards a first round.

    Args:
        dataset: a dataset with a BubbleFence state
        new_ids: the ids of the samples the round would split
    """
    n_valued = n_tagged = 0
    paths: list[str] = []
    split_tags = [t for t in dataset.distinct("tags") if role_of(t)]  # aliases too
    for chunk in id_chunks(new_ids):
        view = dataset.select(chunk)
        valued = view.exists(SPLIT_FIELD) if dataset.has_field(SPLIT_FIELD) else view.limit(0)
        tagged = view.match_tags(split_tags) if split_tags else view.limit(0)
        found = valued.count(), tagged.count()
        n_valued, n_tagged = n_valued + found[0], n_tagged + found[1]
        if any(found):  # examples only where there is something to show
            paths += (valued.limit(3).values("filepath") + tagged.limit(3).values("filepath"))[:3]
    if not (n_valued or n_tagged):
        return
    shown = ", ".join(repr(p) for p in list(dict.fromkeys(paths))[:3])
    # The hint copies what they carry, values or tags, into a field before clearing it
    # (a stress test: copying the values of samples that carried tags alone failed on
    # all-None values, and the next step would have dropped the tags' split).
    raise ValueError(
        f"{max(n_valued, n_tagged)} of the samples not split yet on dataset {dataset.name!r} "
        f"already have a {SPLIT_FIELD!r} value ({n_valued}) or a split tag ({n_tagged}) that "
        "BubbleFence did not write (merged from another dataset, or a split that came with "
        f"them; e.g. {shown}), and this round would replace them. To keep that split, copy "
        "it to another field, then clear it from those samples, e.g. in Python: "
        "import bubblefence_plugin.fo as bfo; "
        "new = dataset.select(bfo.ids_not_split(dataset)); "
        + (
            f"v = new.exists({SPLIT_FIELD!r}); v.set_values('original_split', "
            f"v.values({SPLIT_FIELD!r})); v.clear_sample_field({SPLIT_FIELD!r}); "
            if n_valued
            else ""
        )
        + (
            f"for t in {split_tags!r}: v = new.match_tags(t); v.set_values("
            "'original_split', [t] * len(v)); then "
            f"new.untag_samples({split_tags!r})"
            if n_tagged
            else ""
        )
    )


# --------------------------------------------------------------------------- split mirror


def assignment_table(
    ids: Sequence[str],
    split: Any,
    anchor: Any,
    shell: Any,
    rnd: Any,
    duplicate_of: Any,
) -> dict[str, list]:
    """Assignments as plain Python lists, None where a field is unset (train has no
    anchor or shell).

    Args:
        ids: sample ids
        split: split name per sample
        anchor: bubble id per sample, negative for none
        shell: ``inner``/``outer`` per sample, empty for none
        rnd: round per sample, or one round for all
        duplicate_of: id of the sample each duplicates, empty for none
    """
    return {
        "id": [str(i) for i in ids],
        "split": [str(s) for s in np.asarray(split)],
        "anchor_id": [None if int(a) < 0 else int(a) for a in np.asarray(anchor)],
        "shell": [s if s else None for s in np.asarray(shell, dtype=object)],
        "round": [int(r) for r in np.broadcast_to(np.asarray(rnd), (len(ids),))],
        "duplicate_of": [d if d else None for d in np.asarray(duplicate_of, dtype=object)],
    }


def table_from_frame(frame: Any) -> dict[str, list]:
    """`assignment_table` of a ``BubbleFence.assignments()`` frame.

    Args:
        frame: the pandas frame of ``BubbleFence.assignments()`` (or some of its rows)
    """
    return assignment_table(
        frame["id"].tolist(),
        frame["split"].to_numpy(),
        frame["anchor_id"].fillna(-1).to_numpy(),
        frame["shell"].fillna("").to_numpy(),
        frame["round"].to_numpy(),
        frame["duplicate_of"].fillna("").to_numpy(),
    )


def write_assignments(dataset: fo.Dataset, table: dict[str, list]) -> None:
    """Mirrors assignments into fields and tags; idempotent, so a repair can rerun it.

    One bulk write, not a `set_values` per field: samples with the same values (all
    train samples of a round; a bubble's shell) share one update, which at 100k samples
    takes seconds where six `set_values` took 24 s. It goes through FiftyOne's own
    private ``_bulk_write``, which refreshes loaded samples; the fields exist already
    (`declare_fields`), and ``last_modified_at`` is set as `set_values` sets it.

    Args:
        dataset: the dataset
        table: an `assignment_table`
    """
    from bson import ObjectId
    from pymongo import UpdateMany

    ids = table["id"]
    if not ids:
        return
    now = datetime.now(timezone.utc).replace(tzinfo=None)  # FiftyOne stores naive UTC
    same_values: dict[tuple, list[ObjectId]] = {}
    for sid, *values in zip(ids, *(table[c] for c in ASSIGNMENT_COLUMNS), strict=True):
        same_values.setdefault(tuple(values), []).append(ObjectId(sid))
    # Untag first: stale tags (an earlier interrupted write, zoo split tags) must not
    # leave a sample tagged both train and test. `ordered` keeps this before the tagging.
    stale = {"$pull": {"tags": {"$in": list(SPLIT_TAGS)}}}
    ops = [
        UpdateMany({"_id": {"$in": chunk}}, stale) for chunk in id_chunks(list(map(ObjectId, ids)))
    ]
    for (split_value, anchor, shell, rnd, duplicate), oids in same_values.items():
        fields = {
            SPLIT_FIELD: split_value,
            ANCHOR_FIELD: anchor,
            SHELL_FIELD: shell,
            ROUND_FIELD: rnd,
            DUPLICATE_FIELD: duplicate,
            ERROR_FIELD: None,
            "last_modified_at": now,
        }
        update: dict[str, Any] = {"$set": fields}
        if split_value in SPLIT_TAGS:
            update["$addToSet"] = {"tags": split_value}
        ops.extend(UpdateMany({"_id": {"$in": chunk}}, update) for chunk in id_chunks(oids))
    dataset._bulk_write(ops, ids=ids, ordered=True)


def id_chunks(items: list) -> Iterator[list]:
    """``items`` in consecutive pieces of at most `MAX_IDS_PER_QUERY` (read at each call).

    Args:
        items: ids
    """
    size = MAX_IDS_PER_QUERY
    for start in range(0, len(items), size):
        yield items[start : start + size]


def values_by_id(
    dataset: foc.SampleCollection, ids: list[str], paths: list[str], raw: bool = False
) -> tuple[list[str], list[list]]:
    """(the ids found, one list of values per path) of samples ``ids``, in the order of
    ``ids``, whatever their number; ids not in the dataset (or view) are left out.

    A view selects `MAX_IDS_PER_QUERY` ids at a time (see there), and each piece is
    put in the order of ``ids`` here: FiftyOne's ordered `select` finds each sample's
    place in the whole list in the database, quadratic in the number of ids.

    Args:
        dataset: the dataset, or a view of it
        ids: sample ids
        paths: the fields to read
        raw: values as stored (FiftyOne's ``_raw``), not through ``to_python``
    """
    found: list[str] = []
    columns: list[list] = [[] for _ in paths]
    for chunk in id_chunks(list(dict.fromkeys(ids))):
        chunk_ids, *values = dataset.select(chunk).values(["id", *paths], _raw=raw)
        where = {i: k for k, i in enumerate(chunk_ids)}
        order = [where[i] for i in chunk if i in where]
        found.extend(chunk_ids[k] for k in order)
        for column, value in zip(columns, values, strict=True):
            column.extend(value[k] for k in order)
    return found, columns


def write_embeddings_once(dataset: fo.Dataset, field: str, ids: list[str], out: Any) -> int:
    """Writes one chunk's embeddings and errors where ``field`` is still empty.

    Each update is conditional on the sample having no embedding yet, which MongoDB
    checks atomically per document: of two writers (shards of different layouts, a
    split racing its shards) exactly one writes a sample, and a stored vector never
    changes, which the state's per-sample checksums rely on. A successful sample's
    old error is cleared; a failed one gets its message unless another writer has
    embedded it meanwhile. Raw updates (as in `write_assignments`) because
    ``set_values`` cannot be conditional, and FiftyOne's ``_bulk_write`` does not return
    the counts; so its two private steps are done here: the write to the private
    sample collection, and the refresh of loaded samples.

    Args:
        dataset: the dataset
        field: the vector field
        ids: the chunk's sample ids, in the order of ``out``'s rows
        out: the embedder's result for the chunk (``ok``, ``embeddings``, ``errors``)

    Returns:
        how many embeddings this call wrote
    """
    from bson import ObjectId
    from fiftyone.core.odm.database import bulk_write
    from fiftyone.core.sample import Sample
    from pymongo import UpdateOne

    now = datetime.now(timezone.utc).replace(tzinfo=None)  # FiftyOne stores naive UTC
    vectors = dataset.get_field(field)
    ok_rows = np.flatnonzero(out.ok)
    ok_ops = [
        UpdateOne(
            {"_id": ObjectId(ids[row]), field: None},
            {"$set": {field: vectors.to_mongo(vec), ERROR_FIELD: None, "last_modified_at": now}},
        )
        for row, vec in zip(ok_rows, out.embeddings, strict=True)
    ]
    error_ops = [
        UpdateOne(
            {"_id": ObjectId(ids[row]), field: None},
            {"$set": {ERROR_FIELD: msg, "last_modified_at": now}},
        )
        for row, msg in out.errors.items()
    ]
    coll = dataset._sample_collection
    written = sum(r.modified_count for r in bulk_write(ok_ops, coll)) if ok_ops else 0
    if error_ops:
        bulk_write(error_ops, coll)
    Sample._reload_docs(dataset._sample_collection_name, sample_ids=ids)
    return written


def clear_excluded_fields(samples: foc.SampleCollection) -> int:
    """Clears the split fields and split tags of the excluded samples of ``samples``;
    returns how many. The exclusion reason of samples no longer tagged `EXCLUDED_TAG`
    (the tag removed by hand) goes too: it would say they are still out.

    Run after the commit that dropped them from the state; idempotent, so a run that
    died in between finishes the job next time.

    Args:
        samples: the dataset, or a view of the samples the state no longer holds
    """
    if samples.has_field(REASON_FIELD):
        stale = samples.match_tags(EXCLUDED_TAG, bool=False).exists(REASON_FIELD)
        if stale.count():
            stale.clear_sample_field(REASON_FIELD)
    if not samples.has_field(ROUND_FIELD):
        return 0
    # A view by match, not by a list of ids: FiftyOne copies a view's stages at every
    # step, and copying an id list took 0.2 s of a 1.1 s exclusion (800 of 30,000).
    view = samples.match_tags(EXCLUDED_TAG).exists(ROUND_FIELD)
    n_cleared = view.count()
    if n_cleared:
        view.untag_samples(list(SPLIT_TAGS))  # first: the view still matches them
        view.clear_sample_fields([f for f in RESULT_FIELDS if f != ERROR_FIELD])
    return n_cleared


# --------------------------------------------------------------------------- labels and groups


def _label_path(field: Any, name: str, multi_ok: bool) -> tuple[str, bool] | None:
    """(values path, several labels per sample) of a usable label/group field, else None."""
    if isinstance(field, fo.EmbeddedDocumentField):
        doc = field.document_type
        for label_list, attr in _LABEL_LISTS.items():
            if multi_ok and issubclass(doc, label_list):
                return f"{name}.{attr}.label", True
        if issubclass(doc, fo.Classification):
            return f"{name}.label", False
        if issubclass(doc, fo.Group):  # a flattened grouped dataset: the group's id
            return f"{name}.id", False
    elif isinstance(field, fo.ListField) and isinstance(field.field, _SCALAR_FIELDS):
        return (name, True) if multi_ok else None
    elif isinstance(field, _SCALAR_FIELDS):
        return name, False
    return None


def _untyped_list_of_labels(dataset: fo.Dataset, name: str, field: Any) -> bool:
    """Whether ``field`` is a list whose element type FiftyOne did not declare (it does
    not when the first value it saw was ``[]``) and whose values are strings or ints."""
    if not isinstance(field, fo.ListField) or field.field is not None:
        return False
    values = dataset.distinct(name)  # the lists' elements
    return bool(values) and all(isinstance(v, (str, int)) for v in values)


def _list_above(dataset: fo.Dataset, path: str) -> str | None:
    """The first list field on the way down to ``path`` (``ground_truth.detections`` for
    ``ground_truth.detections.label``), else None: its values come a list per sample."""
    parts = path.split(".")
    for end in range(1, len(parts)):
        prefix = ".".join(parts[:end])
        if isinstance(dataset.get_field(prefix), fo.ListField):
            return prefix
    return None


def label_field_choices(
    dataset: fo.Dataset, multi_ok: bool = True, asked: str | None = None
) -> list[str]:
    """Sample fields usable as labels (``multi_ok``) or as groups (one value per sample).

    Args:
        dataset: the dataset
        multi_ok: whether fields with several labels per sample qualify (labels: yes,
            groups: no)
        asked: a field a caller gave by name: a path inside a field (``clf.label``,
            ``gt.detections.label``) that `label_source` accepts is a choice too, as the
            Python API takes it
    """
    choices = sorted(
        name
        for name, field in dataset.get_field_schema().items()
        if name not in _NOT_LABELS
        and name not in RESULT_FIELDS
        and _label_path(field, name, multi_ok) is not None
    )
    if asked and isinstance(asked, str) and "." in asked and asked not in choices:
        try:
            label_source(dataset, asked, "label_field" if multi_ok else "group_field")
        except ValueError:
            return choices
        choices.append(asked)
    return choices


def label_source(dataset: fo.Dataset, field: str, param: str) -> tuple[str, bool]:
    """(values path, several labels per sample) of a label or group field; checks it.

    Labels (``param="label_field"``) come from a Classification, a label list
    (Classifications, Detections, Polylines, Keypoints: every object's label), a
    string/int field or a list of strings; groups from a string/int/ObjectId field, a
    Classification's label or a Group's id.

    Args:
        dataset: the dataset
        field: the field's name
        param: ``"label_field"`` or ``"group_field"``: what the field is for, as the
            error messages name it
    """
    multi_ok = param == "label_field"
    if field.split(".")[0] in _NOT_LABELS or field in RESULT_FIELDS:
        raise ValueError(
            f"{param}={field!r} cannot be used: ids, paths, tags (the split's own), metadata "
            "and BubbleFence's fields are not labels or groups; choose a label field"
        )
    if field.startswith("frames.") and dataset.media_type == "video":
        raise ValueError(
            f"{param}={field!r} is a frame field: one value per frame, where a "
            f"{'label' if multi_ok else 'group'} is one per sample; choose a sample field"
        )
    schema_field = dataset.get_field(field)
    if schema_field is None:
        raise ValueError(f"{param}={field!r}: dataset {dataset.name!r} has no such field")
    within = _list_above(dataset, field)
    if within and isinstance(schema_field, _SCALAR_FIELDS):
        # "ground_truth.detections.label": every object's label, as the field itself gives.
        if multi_ok:
            return field, True
        raise ValueError(
            f"{param}={field!r} lies inside the list field {within!r}: several values per "
            "sample, where a group is one"
        )
    found = _label_path(schema_field, field, multi_ok)
    if found is None and multi_ok and _untyped_list_of_labels(dataset, field, schema_field):
        found = field, True
    if found is None:
        kinds = (
            "a Classification, Classifications, Detections, Polylines, Keypoints, string, "
            "int or list-of-strings field"
            if multi_ok
            else "a string, int, ObjectId, Classification or Group field"
        )
        kind = type(schema_field).__name__
        raise ValueError(f"{param}={field!r} is a field of type {kind}; expected {kinds}")
    return found


def label_values(
    dataset: fo.Dataset, ids: list[str], field: str | None, param: str = "label_field"
) -> np.ndarray | list | None:
    """Per sample of ``ids`` (in that order): its label, its list of labels, or its
    group id; None without a field.

    Args:
        dataset: the dataset
        ids: sample ids
        field: a label or group field (see `label_source`), or None
        param: ``"label_field"`` or ``"group_field"``
    """
    if not field:
        return None
    path, multi = label_source(dataset, field, param)
    return labels_from_values(values_by_id(dataset, ids, [path])[1][0], multi)


def labels_from_values(values: Iterable[Any], multi: bool) -> np.ndarray | list:
    """Values read at a `label_source` path, as labels: a list of labels per sample for a
    field with several labels per sample ([] for none), else `label_strings`.

    Args:
        values: the values of the path, one per sample
        multi: the path's "several labels per sample" flag from `label_source`
    """
    return [v or [] for v in values] if multi else label_strings(values)


def label_strings(values: Iterable[Any]) -> np.ndarray:
    """Label or group values as strings: a Classification's label, "" for None.

    Args:
        values: field values (strings, ints, Classifications, None)
    """
    out = []
    for v in values:
        if v is not None and hasattr(v, "label"):  # Classification and friends
            v = v.label
        out.append("" if v is None else str(v))
    return np.asarray(out, dtype=str)


def errors_by_filepath(dataset: fo.Dataset, errors: dict[str, str]) -> dict[str, str]:
    """Per-sample errors keyed by the sample's file, which is what a user can find and fix.

    Args:
        dataset: the dataset
        errors: sample id -> message
    """
    if not errors:
        return {}
    paths = dict(zip(*dataset.select(list(errors)).values(["id", "filepath"]), strict=True))
    return {paths.get(sid, sid): message for sid, message in errors.items()}
