"""Reset: removes everything a split wrote on a dataset, so the next split starts over.

Its own module because it reaches every part: the state (`state`), the split fields
and tags (`fields`) and the map (`map`), which the split writes in that order.
"""

from __future__ import annotations

from typing import Any

import fiftyone as fo
import fiftyone.core.collections as foc

from .audit import LEAKS_VIEW, TAGS_SOURCE, latest_report
from .curate import REGIONS_KEY, delete_regions, load_regions
from .fields import (
    EMBEDDING_FIELD,
    RESULT_FIELDS,
    ROUND_FIELD,
    SPLIT_FIELD,
    SPLIT_TAGS,
    root_dataset,
)
from .map import delete_map
from .runs import RunLock
from .state import STATE_RUN


def reset(samples: foc.SampleCollection, keep_embeddings: bool = False) -> dict[str, Any]:
    """Removes the state, the result fields, the split tags and the map BubbleFence wrote.

    Works on the whole dataset (the state is dataset-wide); other tags and fields,
    audit reports and curation regions are kept, but regions built from the embeddings
    it deletes (a later split may fill that field from another model), and the saved
    view of leaking samples when the latest report audited the split it removes (the
    ``split`` field or the split tags: those samples are no longer eval). Refused while
    a run holds the dataset.

    Example usage::

        import bubblefence_plugin.fo as bf

        bf.reset(dataset, keep_embeddings=True)  # the next split reuses the vectors
        bf.split(dataset, seed=7)  # a frozen knob can change after a reset

    Args:
        samples: a dataset or view; its dataset is reset
        keep_embeddings: keep the ``bubblefence_embedding`` field

    Returns:
        what was removed: ``removed_runs``, ``removed_fields``,
        ``n_samples_untagged``, ``n_tags_removed``, ``kept_embeddings``,
        ``removed_views``
    """
    dataset = root_dataset(samples)
    with RunLock(dataset, "reset"):
        n_assigned = n_untagged = 0
        if dataset.has_field(ROUND_FIELD):
            # A view by match, not by ids: a million ids would pass MongoDB's limit.
            view = dataset.exists(ROUND_FIELD)
            n_assigned = view.count()
            n_untagged = sum(view.count_sample_tags().get(t, 0) for t in SPLIT_TAGS)
            view.untag_samples(list(SPLIT_TAGS))
        removed_runs = STATE_RUN.delete(dataset) + delete_map(dataset)
        fields = list(RESULT_FIELDS)
        if not keep_embeddings:
            fields.append(EMBEDDING_FIELD)
        removed_fields = [f for f in fields if dataset.has_field(f)]
        if removed_fields:
            dataset.delete_sample_fields(removed_fields)
        regions = load_regions(dataset)
        if regions is not None and regions[1].get("embeddings_field") in removed_fields:
            delete_regions(dataset)
            removed_runs.append(REGIONS_KEY)
        removed_views = _delete_stale_leaks_view(dataset)
    return {
        "dataset": dataset.name,
        "removed_runs": removed_runs,
        "removed_fields": removed_fields,
        "n_samples_untagged": n_assigned,
        "n_tags_removed": int(n_untagged),
        "kept_embeddings": bool(keep_embeddings and dataset.has_field(EMBEDDING_FIELD)),
        "removed_views": removed_views,
    }


def _delete_stale_leaks_view(dataset: fo.Dataset) -> list[str]:
    """Deletes `LEAKS_VIEW` when the latest report audited our split, which reset just
    removed; a report of another split field keeps its view, which is still true."""
    report = latest_report(dataset)
    if not dataset.has_saved_view(LEAKS_VIEW) or report is None:
        return []
    if report["source"] not in (SPLIT_FIELD, TAGS_SOURCE):
        return []
    dataset.delete_saved_view(LEAKS_VIEW)
    return [LEAKS_VIEW]
