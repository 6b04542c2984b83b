"""BubbleFence on FiftyOne datasets: leak-resistant train/validation/test splits, their
audit, curation, export and reset.

This package is the public API that operators, panels, the command line and Python
users call; the algorithm itself lives in `bubblefence_plugin.core` and never sees a
FiftyOne object. Every long step also exists as a generator of `Progress` events
(``iter_split``, ``iter_report``, ``iter_sample``, ``iter_embed``), which `drive` runs
with a callback and an operator relays to the App.

Example usage::

    import fiftyone.zoo as foz
    import bubblefence_plugin.fo as bf

    dataset = foz.load_zoo_dataset("quickstart")

    # One round: new samples are assigned, earlier ones never move
    summary = bf.split(dataset, eval_ratio=0.2, label_field="ground_truth")
    print(summary["message"])
    dataset.count_sample_tags()  # train / validation / test

    # Audit any split against a random one at the same ratios
    r = bf.report(dataset, "split", html_path="/tmp/audit.html")
    for row in bf.summary_rows(r):
        print(row["metric"], row["split"], row["baseline"])

    # Pick samples to label, export the splits, start over
    bf.sample(dataset, "diverse", count=50, tag="to_label", from_split="train")
    bf.export(dataset, "/tmp/bubblefence-export")
    bf.reset(dataset)

The modules, each named for what it is: `split` (the round), `state` (the stored
split state), `runs` (the run store and lock), `fields` (field and tag names, bulk
writes, label fields), `embeddings`, `shards` (delegated embedding), `audit`, `map`
(the 2-D map), `curate`, `export` and `reset`. The functions ``split``, ``export``
and ``reset`` exported here shadow the modules of the same name as attributes of this
package; import those modules as ``from bubblefence_plugin.fo.split import ...``.
"""

from ..core.progress import Progress, ProgressCallback, drive
from .audit import (
    BRAIN_QUADRATIC_ABOVE,
    LEAKS_VIEW,
    TAGS_SOURCE,
    AuditOptions,
    iter_report,
    latest_report,
    list_reports,
    names_a_split,
    report,
    split_sources,
    split_warnings,
    summary_rows,
    write_json,
)
from .calibrate import calibrate_threshold, iter_calibrate_threshold
from .curate import (
    DEFAULT_TAG,
    REASON_FIELD,
    REGION_FIELD,
    RESERVED_TAGS,
    TYPICALITY_FIELD,
    exclude,
    include_again,
    is_reserved_tag,
    iter_sample,
    load_regions,
    parse_target,
    sample,
    write_excluded_paths,
)
from .embeddings import (
    ModelUnavailableError,
    get_embedder,
    holds_vectors,
    kept_model,
    vector_fields,
)
from .export import (
    EXPORT_TYPES,
    MANIFEST_COLUMNS,
    export,
    export_folders,
    iter_export,
    path_inside,
    safe_name,
)
from .fields import (
    ANCHOR_FIELD,
    DUPLICATE_FIELD,
    EMBEDDING_FIELD,
    ERROR_FIELD,
    EXCLUDED_TAG,
    RESULT_FIELDS,
    ROUND_FIELD,
    SHELL_FIELD,
    SPLIT_FIELD,
    SPLIT_TAGS,
    SPLIT_VALUES,
    app_view,
    clear_excluded_fields,
    label_field_choices,
    label_strings,
)
from .map import BUBBLES_TRACE, COLOR_BY, DEFAULT_METHOD, build_map, map_figure, map_summary
from .reset import reset
from .runs import BubbleFenceBusyError, is_locked
from .shards import (
    ShardReport,
    check_embeddings_field,
    embed,
    iter_embed,
    iter_wait_for_shards,
    pending_shards,
    queue_shards,
    shard_label,
    wait_for_shards,
)
from .split import check_split_config, iter_split, split
from .state import RUN_KEY, ids_not_split, load_state, state_info, unfinished_round

__all__ = [
    "ANCHOR_FIELD",
    "BRAIN_QUADRATIC_ABOVE",
    "BUBBLES_TRACE",
    "COLOR_BY",
    "DEFAULT_METHOD",
    "DEFAULT_TAG",
    "DUPLICATE_FIELD",
    "EMBEDDING_FIELD",
    "ERROR_FIELD",
    "EXCLUDED_TAG",
    "EXPORT_TYPES",
    "LEAKS_VIEW",
    "MANIFEST_COLUMNS",
    "REASON_FIELD",
    "REGION_FIELD",
    "RESERVED_TAGS",
    "RESULT_FIELDS",
    "ROUND_FIELD",
    "RUN_KEY",
    "SHELL_FIELD",
    "SPLIT_FIELD",
    "SPLIT_TAGS",
    "SPLIT_VALUES",
    "TAGS_SOURCE",
    "TYPICALITY_FIELD",
    "AuditOptions",
    "BubbleFenceBusyError",
    "ModelUnavailableError",
    "Progress",
    "ProgressCallback",
    "ShardReport",
    "app_view",
    "build_map",
    "calibrate_threshold",
    "iter_calibrate_threshold",
    "check_embeddings_field",
    "check_split_config",
    "clear_excluded_fields",
    "drive",
    "embed",
    "exclude",
    "export",
    "iter_export",
    "export_folders",
    "get_embedder",
    "holds_vectors",
    "include_again",
    "is_reserved_tag",
    "is_locked",
    "iter_embed",
    "iter_report",
    "iter_sample",
    "iter_split",
    "iter_wait_for_shards",
    "kept_model",
    "vector_fields",
    "label_field_choices",
    "label_strings",
    "latest_report",
    "list_reports",
    "load_regions",
    "ids_not_split",
    "load_state",
    "map_figure",
    "map_summary",
    "parse_target",
    "path_inside",
    "pending_shards",
    "queue_shards",
    "report",
    "reset",
    "safe_name",
    "sample",
    "shard_label",
    "split",
    "names_a_split",
    "split_sources",
    "split_warnings",
    "state_info",
    "unfinished_round",
    "summary_rows",
    "write_json",
    "wait_for_shards",
    "write_excluded_paths",
]
