"""Curation on a FiftyOne collection: `sample` picks, `exclude` / `include_again` cleans.

`sample` reads the embeddings field (the split's own field by default), picks with
`bubblefence_plugin.core.curation`, tags the pick with a tag that did not exist before
(refused unless ``replace=True``) and writes two score fields for every sample it
read: ``bubblefence_typicality`` (see `curation.typicality`) and ``bubblefence_region``
(the incremental `RegionIndex`, stored as the custom run ``bubblefence_regions``:
samples that have a region keep it, new ones join the nearest region or open one).
Samples tagged ``excluded`` are never read, scored or picked (scores written before
their exclusion stay, as their history).

`exclude` tags samples ``excluded`` (with an optional reason in
``bubblefence_exclusion_reason``). A sample that was already split leaves its split at
once: it is dropped from the BubbleFence state (``BubbleFence.forget``), its split
fields and split tags are cleared, and the state's parameters list the excluded ids;
no other sample moves. `include_again` removes the tag, and the next split round
assigns those samples as new ones.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fiftyone as fo
import fiftyone.core.collections as foc
import numpy as np

from ..core.config import unknown_names_message
from ..core.curation import (
    BALANCE_TARGETS,
    STRATEGIES,
    TYPICALITY_K,
    CurationRequest,
    select,
    typicality,
)
from ..core.progress import Progress, ProgressCallback, Steps, drive
from ..text import counted
from .embeddings import check_vector_field, read_embeddings, vector_fields
from .export import write_text_whole
from .fields import (
    DUPLICATE_FIELD,
    EXCLUDED_TAG,
    REASON_FIELD,
    SPLIT_ALIASES,
    SPLIT_FIELD,
    SPLIT_TAGS,
    check_collection,
    clear_excluded_fields,
    declare_fields,
    id_chunks,
    label_source,
    label_strings,
    role_of,
    roles_from_tags,
    values_by_id,
)
from .runs import RunLock, RunType, from_npy_text, to_npy_text
from .state import STATE_RUN, default_vector_field, forget_excluded, load_state

TYPICALITY_FIELD = "bubblefence_typicality"
REGION_FIELD = "bubblefence_region"
REGIONS_RUN = RunType("bubblefence_regions", "bubblefence-regions", 1, "regions_version")
REGIONS_KEY = REGIONS_RUN.key
DEFAULT_TAG = "bubblefence_sample"
SCORE_FIELDS = {TYPICALITY_FIELD: fo.FloatField, REGION_FIELD: fo.IntField}
# Tags a pick may not take: they carry the split's or the exclusion's meaning.
RESERVED_TAGS = (*SPLIT_TAGS, EXCLUDED_TAG)


# --------------------------------------------------------------------------- sample


def sample(
    samples: foc.SampleCollection,
    strategy: str | Sequence[str] = "diverse",
    count: int = 100,
    tag: str = DEFAULT_TAG,
    *,
    strengths: dict[str, float] | None = None,
    embeddings_field: str | None = None,
    from_split: str | None = None,
    start_from: str | None = None,
    label_field: str | None = None,
    target: str | dict[str, float] = "uniform",
    query_tag: str | None = None,
    metadata_field: str | None = None,
    seed: int = 0,
    k: int = TYPICALITY_K,
    replace: bool = False,
    rebuild_regions: bool = False,
    progress: ProgressCallback | None = None,
) -> dict[str, Any]:
    """Tags ``count`` samples of ``samples`` picked by ``strategy``; returns a summary.

    Every sample read gets ``bubblefence_typicality`` and ``bubblefence_region``.
    Everything is validated before anything is written; samples tagged ``excluded``
    are never read, scored or picked (scores from before their exclusion stay).

    Example usage::

        import bubblefence_plugin.fo as bf

        # the 100 most diverse train samples, to label first
        bf.sample(dataset, "diverse", count=100, tag="to_label", from_split="train")

        # spread over the space, but favouring typical samples: strengths weigh them
        bf.sample(dataset, strengths={"diverse": 1.0, "typical": 0.5}, count=50, tag="mix")

    Args:
        samples: a dataset or view
        strategy: one name of `bubblefence_plugin.core.curation.STRATEGIES` or several,
            each at strength 1 unless ``strengths`` says otherwise
        count: how many samples to pick
        tag: the tag the pick gets; it must not exist yet unless ``replace``
        strengths: strategy -> strength (alone, it also names the strategies)
        embeddings_field: the vector field (default: the split's, else
            ``bubblefence_embedding``, else the first vector field, as a report)
        from_split: pick only among that split's samples
        start_from: a tag or split whose samples count as already picked, so
            ``diverse`` adds what they lack
        label_field: one label per sample, for ``balance``
        target: ``balance``'s target: ``uniform``, ``input`` or shares per label
        query_tag: the tag of the query samples, for ``similar``
        metadata_field: a numeric field, for ``metadata``
        seed: of every random choice
        k: neighbours of the typicality score
        replace: move an existing ``tag`` to this pick
        rebuild_regions: fit the regions (``bubblefence_region``) afresh from
            ``embeddings_field``: needed once the stored ones were built from another
        progress: called as ``progress(fraction, label)`` while picking

    Returns:
        a JSON-able summary: ``n_picked``, ``picked_ids``, ``quotas``, ``message``...
    """
    gen = iter_sample(
        samples,
        strategy,
        count,
        tag,
        strengths=strengths,
        embeddings_field=embeddings_field,
        from_split=from_split,
        start_from=start_from,
        label_field=label_field,
        target=target,
        query_tag=query_tag,
        metadata_field=metadata_field,
        seed=seed,
        k=k,
        replace=replace,
        rebuild_regions=rebuild_regions,
    )
    return drive(gen, progress)


def iter_sample(
    samples: foc.SampleCollection,
    strategy: str | Sequence[str] = "diverse",
    count: int = 100,
    tag: str = DEFAULT_TAG,
    *,
    strengths: dict[str, float] | None = None,
    embeddings_field: str | None = None,
    from_split: str | None = None,
    start_from: str | None = None,
    label_field: str | None = None,
    target: str | dict[str, float] = "uniform",
    query_tag: str | None = None,
    metadata_field: str | None = None,
    seed: int = 0,
    k: int = TYPICALITY_K,
    replace: bool = False,
    rebuild_regions: bool = False,
) -> Steps[dict[str, Any]]:
    """`sample` as a generator of `Progress` events; the summary is its return value.

    Args:
        samples: a dataset or view
        strategy: as for `sample`; so are ``count``, ``tag`` and the keyword arguments
    """
    dataset = check_collection(samples)
    request = make_request(strategy, strengths, count, seed=seed, k=k, target=target)
    field = _embeddings_field(dataset, embeddings_field)
    _check_tag(dataset, tag, replace)
    # A split's alias ("val") names it, as in the audit.
    from_split = role_of(from_split) or from_split
    _check_options(dataset, request, from_split, start_from, label_field, query_tag)
    metadata_path = _numeric_path(dataset, metadata_field) if metadata_field else None
    if "metadata" in request.active and not metadata_path:
        raise ValueError("strategy metadata needs metadata_field (a numeric field)")
    declare_fields(dataset, SCORE_FIELDS)

    with RunLock(dataset, "sample") as lock:
        yield Progress(0.02, "Reading embeddings")
        pool = _candidates(
            dataset, samples, field, from_split, start_from, query_tag, label_field, metadata_path
        )
        yield Progress(0.1, f"Typicality of {len(pool.ids)} samples")
        typ = typicality(pool.x, request.k, request.seed)
        lock.heartbeat(force=True)
        yield Progress(0.5, "Regions")
        if rebuild_regions:
            delete_regions(dataset)
            declare_fields(dataset, SCORE_FIELDS)  # the region field again, empty
        regions = _assign_regions(dataset, pool.ids, pool.x, field, request.seed)
        n_candidates = int(pool.eligible.sum())
        yield Progress(0.6, f"Picking {request.count} of {n_candidates} candidates")
        chosen = select(
            pool.x,
            request,
            eligible=pool.eligible,
            labels=pool.labels,
            query=pool.query,
            metadata=pool.metadata,
            start=pool.start,
            typicality_scores=typ,
        )
        lock.heartbeat(force=True)
        yield Progress(0.85, f"Tagging {len(chosen.rows)} samples {tag!r}")
        picked = [pool.ids[i] for i in chosen.rows]
        _write_pick(dataset, tag, replace, picked, pool.ids, typ, regions)
    yield Progress(1.0, "Done")
    strengths_text = ", ".join(f"{n} {request.strengths[n]:g}" for n in request.active)
    return {
        "dataset": dataset.name,
        "tag": tag,
        "strengths": {n: request.strengths[n] for n in request.active},
        "n_read": len(pool.ids),
        "n_errors": len(pool.errors),
        "n_candidates": n_candidates,
        "n_copies_not_picked": pool.n_copies,
        "n_picked": len(picked),
        "quotas": chosen.quotas,
        "n_regions": int(regions.max()) + 1,
        "picked_ids": picked,
        "message": (
            f"Tagged {len(picked)} of {n_candidates} candidates {tag!r} ({strengths_text}); "
            + (
                f"{request.count} were asked, and no more candidates fit the options; "
                if len(picked) < request.count
                else ""
            )
            + f"typicality and regions written for {len(pool.ids)} samples"
            + (
                f"; {counted(pool.n_copies, 'duplicate')} the split found not picked "
                "(their originals can be)"
                if pool.n_copies
                else ""
            )
            + (f"; {len(pool.errors)} samples without a usable embedding" if pool.errors else "")
        ),
    }


@dataclass
class _Pool:
    """The samples a pick reads (every non-excluded sample with a usable embedding), in
    one order, and what the strategies need of them."""

    ids: list[str]
    x: np.ndarray
    errors: dict[str, str]  # sample id -> why its embedding is unusable
    eligible: np.ndarray  # may be picked: in `from_split`, neither start nor query, no copy
    n_copies: int  # copies the split found (`duplicate_of`): read and scored, never picked
    start: np.ndarray | None  # vectors counted as picked already (`start_from`)
    query: np.ndarray | None  # vectors of `query_tag`
    labels: np.ndarray | None
    metadata: np.ndarray | None


def _candidates(
    dataset: fo.Dataset,
    samples: foc.SampleCollection,
    field: str,
    from_split: str | None,
    start_from: str | None,
    query_tag: str | None,
    label_field: str | None,
    metadata_path: str | None,
) -> _Pool:
    ids = samples.match_tags(EXCLUDED_TAG, bool=False).values("id")
    ok_ids, x, errors = read_embeddings(dataset, ids, field, None)
    if len(ok_ids) < 2:
        raise ValueError(
            f"{len(ok_ids)} of the {len(ids)} samples have a usable embedding in "
            f"{field!r}; picking needs at least 2"
        )
    # A copy the split found (set aside, or in its original's split under the policy
    # "follow") stands for its original: picking both would tag one image twice (and
    # export it twice); it still counts in its neighbours' typicality.
    copies = np.isin(ok_ids, samples.exists(DUPLICATE_FIELD).values("id"))
    eligible = ~copies
    if not eligible.any():
        raise ValueError(
            f"every one of the {len(ok_ids)} samples here is a copy the split found "
            f"(its {DUPLICATE_FIELD!r} names its original): pick from a view that holds "
            "the originals"
        )
    if from_split:
        eligible &= np.isin(ok_ids, _tagged_ids(dataset, from_split))
    for name in (start_from, query_tag):
        if name:  # never re-pick what counts as picked, nor the query itself
            eligible &= ~np.isin(ok_ids, _tagged_ids(dataset, name))
    if not eligible.any():
        raise ValueError(_no_candidates(from_split, start_from, query_tag))

    def vectors_of(tag: str | None) -> np.ndarray | None:
        return _vectors(dataset, _tagged_ids(dataset, tag), field, x.shape[1]) if tag else None

    metadata = None
    if metadata_path:
        values = _values_in_order(dataset, ok_ids, metadata_path)
        metadata = np.asarray([np.nan if v is None else v for v in values], float)
    return _Pool(
        ids=ok_ids,
        x=x,
        errors=errors,
        eligible=eligible,
        n_copies=int(copies.sum()),
        start=vectors_of(start_from),
        query=vectors_of(query_tag),
        labels=_single_labels(dataset, ok_ids, label_field) if label_field else None,
        metadata=metadata,
    )


def _write_pick(
    dataset: fo.Dataset,
    tag: str,
    replace: bool,
    picked: list[str],
    ids: list[str],
    typ: np.ndarray,
    regions: np.ndarray,
) -> None:
    if replace:
        dataset.match_tags(tag).untag_samples(tag)
    dataset.select(picked).tag_samples(tag)
    dataset.set_values(TYPICALITY_FIELD, dict(zip(ids, typ.tolist(), strict=True)), key_field="id")
    dataset.set_values(REGION_FIELD, dict(zip(ids, regions.tolist(), strict=True)), key_field="id")


def make_request(
    strategy: str | Sequence[str] | None,
    strengths: dict[str, float] | None,
    count: int,
    **knobs: Any,
) -> CurationRequest:
    """The validated request: each named strategy at strength 1 unless ``strengths`` says.

    Args:
        strategy: a strategy name, several, or None
        strengths: strategy -> strength, or None
        count: how many samples to pick
        **knobs: further `CurationRequest` fields (``seed``, ``k``, ``target``)
    """
    names = [strategy] if isinstance(strategy, str) else list(strategy or [])
    unknown = [n for n in names if n not in STRATEGIES]
    if unknown:
        raise ValueError(f"strategy={unknown[0]!r} is unknown; use one of {sorted(STRATEGIES)}")
    merged = {n: 1.0 for n in names}
    merged.update(strengths or {})
    return CurationRequest(merged, count, **knobs)


def parse_target(text: str | dict[str, float]) -> str | dict[str, float]:
    """``balance``'s target from text: ``uniform``, ``input``, or explicit shares.

    Args:
        text: ``uniform``, ``input``, shares written ``cat: 0.5, dog: 0.5``, or a dict
    """
    if isinstance(text, dict) or text in BALANCE_TARGETS:
        return text
    shares: dict[str, float] = {}
    for part in str(text).split(","):
        name, sep, value = part.rpartition(":")
        if not sep or not name.strip():
            raise ValueError(
                f"target={text!r}: use {' or '.join(BALANCE_TARGETS)}, or class: share pairs "
                "such as 'cat: 0.5, dog: 0.5'"
            )
        try:
            shares[name.strip()] = float(value)
        except ValueError as e:
            raise ValueError(
                f"target share {value.strip()!r} of {name.strip()!r} is not a number"
            ) from e
    return shares


def _embeddings_field(dataset: fo.Dataset, name: str | None) -> str:
    """The named vector field, else the one a report would read
    (`state.default_vector_field`); checked."""
    field = name or default_vector_field(dataset)
    if field is None:  # not "'bubblefence_embedding' does not exist": never named
        raise ValueError(
            f"dataset {dataset.name!r} has no embeddings to pick from: split it (or run "
            "BubbleFence embed) first, or name the field that holds them "
            f"(embeddings_field; fields of lists of numbers: {vector_fields(dataset)})"
        )
    check_vector_field(dataset, field)
    return field


def is_reserved_tag(tag: str) -> bool:
    """Whether a pick may not take ``tag``: a split's or the exclusion's, in any case
    and spacing, and the split aliases the audit reads (`fields.role_of`): a pick tagged
    "val" put its samples in two splits in a report of the tags (found by a stress test).

    Args:
        tag: a tag name
    """
    return bool(role_of(tag)) or tag.strip().lower() == EXCLUDED_TAG


def _check_tag(dataset: fo.Dataset, tag: str, replace: bool) -> None:
    if not isinstance(tag, str) or not tag.strip():
        raise ValueError("tag must be a non-empty string")
    if is_reserved_tag(tag):
        raise ValueError(
            f"tag={tag!r} is reserved: {', '.join(RESERVED_TAGS)} and the split names the "
            f"audit reads ({', '.join(SPLIT_ALIASES)}), in any case; choose another"
        )
    if not replace and dataset.count_sample_tags().get(tag, 0):
        raise ValueError(
            f"tag {tag!r} already exists on {dataset.count_sample_tags()[tag]} samples; choose "
            "a new tag or pass replace=True to move it to this pick"
        )


def _check_options(
    dataset: fo.Dataset,
    request: CurationRequest,
    from_split: str | None,
    start_from: str | None,
    label_field: str | None,
    query_tag: str | None,
) -> None:
    if from_split is not None and from_split not in SPLIT_TAGS:
        raise ValueError(
            f"from_split={from_split!r}; use one of {SPLIT_TAGS} (or an alias such as 'val')"
        )
    # A split of tags alone (as zoo datasets ship) serves too (`_tagged_ids`).
    if from_split and not dataset.has_field(SPLIT_FIELD) and not _tagged_ids(dataset, from_split):
        raise ValueError(
            f"from_split={from_split!r}, but {dataset.name!r} has no split yet (no split "
            "field, and no sample tagged so)"
        )
    if start_from and not _tagged_ids(dataset, start_from):
        raise ValueError(f"start_from={start_from!r}: no sample has that tag (excluded aside)")
    if "similar" in request.active and not query_tag:
        raise ValueError("strategy similar needs query_tag (the tag of the query samples)")
    if query_tag and not _tagged_ids(dataset, query_tag):
        raise ValueError(f"query_tag={query_tag!r}: no sample has that tag (excluded aside)")
    if "balance" in request.active and not label_field:
        raise ValueError("strategy balance needs label_field (one label per sample)")
    if label_field:
        path, multi = label_source(dataset, label_field, "label_field")
        if multi:
            raise ValueError(
                f"label_field={label_field!r} holds several labels per sample; balance needs "
                "one (a Classification, string or int field)"
            )
        if "balance" in request.active and isinstance(request.target, dict):
            # A class no sample has is a typo: its share would go to the others unsaid.
            classes = sorted({str(v) for v in dataset.distinct(path)})
            unknown = [c for c in request.target if c not in classes]
            if unknown:
                raise ValueError(
                    f"target: {unknown_names_message(unknown, classes, 'class')} in "
                    f"{label_field!r}; its classes: {', '.join(map(repr, classes[:20]))}"
                    + (" ..." if len(classes) > 20 else "")
                )


def _numeric_path(dataset: fo.Dataset, name: str) -> str:
    field = dataset.get_field(name)
    if not isinstance(field, (fo.IntField, fo.FloatField)):
        kind = "no such field" if field is None else type(field).__name__
        raise ValueError(f"metadata_field={name!r} must be a numeric field ({kind})")
    return name


def _tagged_ids(dataset: fo.Dataset, name: str) -> list[str]:
    """Samples with this tag, none of them excluded (an excluded sample is never read: a
    start or query of one steered a pick). A split name or alias (``val``) matches the
    ``split`` field instead where BubbleFence split the dataset, else the split the tags
    give as the audit reads them (`fields.roles_from_tags`: aliases too, a sample with
    two split tags in neither)."""
    role = role_of(name)
    samples = dataset.match_tags(EXCLUDED_TAG, bool=False)
    if role and dataset.has_field(SPLIT_FIELD):
        ids, values = samples.values(["id", SPLIT_FIELD])  # a user's field may say "val"
        return [sid for sid, value in zip(ids, values, strict=True) if role_of(value) == role]
    if role:
        ids, tags = samples.values(["id", "tags"])
        roles, _ = roles_from_tags(tags)
        return [sid for sid, found in zip(ids, roles, strict=True) if found == role]
    return samples.match_tags(name).values("id")


def _vectors(dataset: fo.Dataset, ids: list[str], field: str, dim: int) -> np.ndarray:
    _, x, _ = read_embeddings(dataset, ids, field, dim)
    return x


def _single_labels(dataset: fo.Dataset, ids: list[str], label_field: str) -> np.ndarray:
    path, _ = label_source(dataset, label_field, "label_field")
    return label_strings(_values_in_order(dataset, ids, path))


def _values_in_order(dataset: fo.Dataset, ids: list[str], path: str) -> list[Any]:
    """The values of ``path`` of samples ``ids`` (all in the dataset), in that order."""
    return values_by_id(dataset, ids, [path])[1][0]


def _no_candidates(from_split: str | None, start_from: str | None, query_tag: str | None) -> str:
    limits = [
        f"from_split={from_split!r}" if from_split else "",
        f"start_from={start_from!r}" if start_from else "",
        f"query_tag={query_tag!r}" if query_tag else "",
    ]
    return f"no sample is left to pick from ({', '.join(x for x in limits if x)})"


# --------------------------------------------------------------------------- regions


def _assign_regions(
    dataset: fo.Dataset, ids: list[str], x: np.ndarray, field: str, seed: int
) -> np.ndarray:
    """Region per row: kept where a sample has one, else from the stored `RegionIndex`.

    The index is fitted once (on the first rows seen) and only extended: a new sample
    joins the nearest region or opens one; earlier regions never change.
    """
    from ..core.regions import RegionIndex

    stored = load_regions(dataset)
    if stored is not None and (
        stored[1].get("embeddings_field") != field or stored[0].centres.shape[1] != x.shape[1]
    ):
        raise ValueError(
            f"the stored regions were built from field "
            f"{stored[1].get('embeddings_field')!r}; to rebuild them from {field!r} pass "
            "rebuild_regions=True (the sample form: Rebuild regions)"
        )
    current = np.asarray(
        [-1 if v is None else int(v) for v in _values_in_order(dataset, ids, REGION_FIELD)],
        np.int64,
    )
    todo = np.flatnonzero(current < 0)
    if stored is None:
        index = RegionIndex.fit(x, seed=seed)
    else:
        index = stored[0]
    if len(todo):
        index, ids = index.assign(x[todo], seed=seed)
        current[todo] = ids
    params = REGIONS_RUN.new_params(
        embeddings_field=field,
        join_distance=float(index.join_distance),
        n_regions=int(len(index.centres)),
    )
    payload = {"meta": {}, "arrays": {"centres": to_npy_text(index.centres)}}
    REGIONS_RUN.put(dataset, params, payload)
    return current


def load_regions(dataset: fo.Dataset) -> tuple[Any, dict[str, Any]] | None:
    """(the stored `RegionIndex`, its run parameters), or None.

    Args:
        dataset: the dataset
    """
    from ..core.regions import RegionIndex

    if not dataset.has_run(REGIONS_KEY):
        return None
    params = REGIONS_RUN.params(dataset)
    centres = from_npy_text(REGIONS_RUN.results(dataset).arrays["centres"])
    return RegionIndex(centres=centres, join_distance=float(params["join_distance"])), params


def delete_regions(dataset: fo.Dataset) -> None:
    """Removes the stored regions and the region field (to rebuild from other embeddings).

    Args:
        dataset: the dataset
    """
    if dataset.has_run(REGIONS_KEY):
        dataset.delete_run(REGIONS_KEY)
    if dataset.has_field(REGION_FIELD):
        dataset.delete_sample_field(REGION_FIELD)


# --------------------------------------------------------------------------- exclusion


def exclude(samples: foc.SampleCollection, reason: str | None = None) -> dict[str, Any]:
    """Tags ``samples`` ``excluded`` (with ``reason``) and takes them out of the split now.

    Already split samples leave the state and lose their split fields and tags; no
    other sample moves. Refused while a split runs on the dataset.

    Args:
        samples: the samples to exclude (a dataset or view)
        reason: written to ``bubblefence_exclusion_reason``, or None
    """
    dataset = check_collection(samples)
    if reason is not None and not isinstance(reason, str):
        raise ValueError(f"reason must be a string or None, got {type(reason).__name__}")
    ids = samples.values("id")
    with RunLock(dataset, "exclude"):
        n_new = 0
        for chunk in id_chunks(ids):  # one view of a million ids would pass MongoDB's limit
            view = dataset.select(chunk)
            n_new += len(view.match_tags(EXCLUDED_TAG, bool=False))
            view.tag_samples(EXCLUDED_TAG)
        if reason:
            dataset.set_values(REASON_FIELD, {i: reason for i in ids}, key_field="id")
        left = _apply_exclusions(dataset)
    return {
        "n_samples": len(ids),
        "n_newly_excluded": n_new,
        "n_left_split": len(left),
        "left_ids": left,
        "n_excluded_total": int(dataset.count_sample_tags().get(EXCLUDED_TAG, 0)),
        "message": f"Excluded {counted(n_new, 'sample')} ({len(ids) - n_new} "
        f"{'was' if len(ids) - n_new == 1 else 'were'} already); "
        f"{len(left)} left their split{_tagged_before(left, ids)}",
    }


def _tagged_before(left: list[str], ids: list[str]) -> str:
    """Said when samples tagged excluded earlier (by hand) left the split with these."""
    earlier = len(set(left) - set(ids))
    return f", {earlier} of them tagged {EXCLUDED_TAG!r} earlier" if earlier else ""


def include_again(samples: foc.SampleCollection) -> dict[str, Any]:
    """Removes the ``excluded`` tag and reason; the next split assigns these samples anew.

    Args:
        samples: a dataset or view; its excluded samples are included again
    """
    dataset = check_collection(samples)
    ids = samples.match_tags(EXCLUDED_TAG).values("id")
    with RunLock(dataset, "include"):
        # An exclusion stopped after its commit left its samples' split fields: cleared
        # first, or those samples, new again, would carry a split no state holds. Not
        # those the state still holds (tagged by hand, never out): they keep their split.
        loaded = load_state(dataset, embeddings=False)
        held = set(loaded[0].assignments()["id"].astype(str)) if loaded else set()
        left = [sid for sid in ids if sid not in held]
        for chunk in id_chunks(left):
            clear_excluded_fields(dataset.select(chunk))
        for chunk in id_chunks(ids):
            dataset.select(chunk).untag_samples(EXCLUDED_TAG)
        # Their reasons go with the tag (`clear_excluded_fields`); other samples tagged
        # by hand since the last run leave the split now, and the message says so.
        others = _apply_exclusions(dataset)
    message = _included_message(len(ids), len(ids) - len(left))
    if others:
        message += (
            f"; {counted(len(others), 'other sample')} tagged {EXCLUDED_TAG!r} by hand "
            "left the split"
        )
    return {
        "n_included": len(ids),
        "n_excluded_total": int(dataset.count_sample_tags().get(EXCLUDED_TAG, 0)),
        "left_ids": others,
        "message": message,
    }


def _included_message(n_included: int, n_kept: int) -> str:
    """What Include again did: samples tagged by hand that never left the split keep it."""
    if not n_kept:
        return f"Included {counted(n_included, 'sample')} again; the next split assigns them"
    message = (
        f"Included {counted(n_included, 'sample')} again; {n_kept} had not left the split "
        "yet (tagged by hand, no split since) and keep it"
    )
    if n_included > n_kept:
        message += f"; the next split assigns the other {n_included - n_kept}"
    return message


def _apply_exclusions(dataset: fo.Dataset) -> list[str]:
    """Under the caller's lock: the state drops excluded samples and lists them; the
    mirror is cleared after the commit (see `state.forget_excluded`)."""
    STATE_RUN.finish_interrupted_commit(dataset)
    left = forget_excluded(dataset)
    clear_excluded_fields(dataset)
    return left


def excluded_paths(samples: foc.SampleCollection) -> list[str]:
    """File paths of the excluded samples of ``samples``, in dataset order.

    Args:
        samples: a dataset or view
    """
    return samples.match_tags(EXCLUDED_TAG).values("filepath")


def write_excluded_paths(samples: foc.SampleCollection, path: str | os.PathLike) -> int:
    """Writes the excluded samples' paths, one a line (UTF-8); returns how many.

    Args:
        samples: a dataset or view
        path: the text file to write
    """
    paths = excluded_paths(samples)
    write_text_whole(Path(path), "".join(p + "\n" for p in paths), f"path {str(path)!r}")
    return len(paths)
