"""One ingestion round of BubbleFence, and the state it keeps between rounds (SPEC 2).

    bf = BubbleFence(BubbleFenceConfig(eval_ratio=0.2, seed=0))
    r = bf.ingest(embeddings)           # round 0
    r = bf.ingest(more_embeddings)      # round 1: earlier samples never move
    bf.save("state.npz"); bf = BubbleFence.load("state.npz")

A round works on a copy of the state and commits it only at the end, so an
exception leaves the object exactly as it was.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import sparse
from threadpoolctl import threadpool_limits

from .anchors import CandidateStream, fit_projection, subsample
from .bubbles import (
    DUPLICATE,
    LAYOUT_NAMES,
    SHELL_NAMES,
    SPLIT_NAMES,
    TEST,
    TRAIN,
    UNASSIGNED,
    VALIDATION,
    AnchorTable,
    clear_of_train,
)
from .config import BubbleFenceConfig, frozen_changes, frozen_message
from .dedup import find_duplicates
from .density import LidReference
from .follow import (
    balance_margin_joins,
    bind_to_assigned,
    earlier_index,
    join_existing_bubbles,
    keep_margins,
)
from .groups import (
    crossings_between,
    crossings_changed,
    crossings_of,
    encode_groups,
    follow_known_groups,
    group_codes,
    group_links,
    group_summary,
    is_eval,
    resolve_round,
)
from .grow import (
    SHELL_SECOND_PASS_SLACK,
    BubbleGrower,
    Budget,
    Strata,
    Units,
    eval_floor,
    round_budget,
)
from .labels import LabelIndex, encode_label_sets, label_shares, label_summary
from .neighbors import CellIndex, blas_threads, unit_rows
from .regions import MIN_FIT_ROWS, RegionIndex
from .state import buffer_with_room, claim_buffer, damaged, read_state, write_state
from .twins import twin_components

# Rows used as the neighbour reference when estimating LID for snapping.
LID_REFERENCE = 10_000
# Names the state arrays of the index over the earlier rows (`CellIndex.structure`).
INDEX_PREFIX = "index_"


@dataclass
class RoundResult:
    """One round's outcome, rows aligned with the input of `ingest`."""

    ids: np.ndarray
    split: np.ndarray
    anchor_id: np.ndarray
    shell: np.ndarray
    duplicate_of: np.ndarray
    round: int
    new_anchor_ids: list[int] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)
    # Earlier samples this round made duplicates of a new one (`_adopt_orphans`): their
    # stored assignment changed too, so their fields must follow.
    relinked_ids: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=object))


@dataclass
class _Round:
    """One round's working copy: the steps of `BubbleFence._ingest` write here, and the
    state takes it over at the commit. Rows are the old samples, then the new ones."""

    index: int
    rng: np.random.Generator
    x: np.ndarray
    new_ids: np.ndarray
    n_old: int
    new_labels: np.ndarray | None
    labels_given: bool
    split: np.ndarray
    anchor: np.ndarray
    shell: np.ndarray
    duplicate_of: np.ndarray
    all_labels: np.ndarray | None
    all_groups: np.ndarray | None
    codes: np.ndarray | None
    timings: dict[str, float]
    stats: dict[str, Any] = field(default_factory=dict)
    components: np.ndarray | None = None  # new kept rows' twin components
    regions: RegionIndex | None = None
    region: np.ndarray | None = None
    new_table: AnchorTable | None = None  # the bubbles this round adds
    open_rows: np.ndarray | None = None  # new kept rows left for new bubbles
    unit_of: np.ndarray | None = None  # their units (components at the closure threshold)
    fenced: np.ndarray | None = None  # per open row: train's margin (`keep_margins`)
    # Rows that joined eval through eval's margin (`keep_margins`), and their units.
    margin_joined: np.ndarray | None = None
    margin_units: np.ndarray | None = None
    # Rows that joined an earlier bubble free of twins, and their twin components.
    bubble_joined: np.ndarray | None = None
    bubble_units: np.ndarray | None = None
    earlier_index: CellIndex | None = None  # the kept rows of earlier rounds (`_earlier`)
    kept_index: CellIndex | None = None  # every kept row (round 0's units), for the next round
    new_index: CellIndex | None = None  # the round's new kept rows (`_new_index`)
    batch_index: CellIndex | None = None  # every new row, by position (`DedupResult`)
    relinked: np.ndarray | None = None  # earlier rows `_adopt_orphans` relinked

    @property
    def n(self) -> int:
        return len(self.split)

    @property
    def new_rows(self) -> np.ndarray:
        return np.arange(self.n_old, self.n)

    @property
    def is_duplicate(self) -> np.ndarray:
        return self.duplicate_of >= 0

    @property
    def kept(self) -> np.ndarray:
        return self.duplicate_of < 0

    @property
    def new_kept(self) -> np.ndarray:
        new_rows = self.new_rows
        return new_rows[self.kept[new_rows]]


def _adopt_orphans(work: _Round) -> None:
    """New samples that duplicate an orphan (a duplicate whose original left and that
    could not take its place, `BubbleFence._choose_heirs`: "duplicate", of nothing) are
    kept instead, the earliest of them, and the orphan becomes its duplicate: set aside
    as the orphan's duplicate, an original included again left its image in no split."""
    new_rows = work.new_rows
    target = work.duplicate_of[new_rows]
    hit = (target >= 0) & (target < work.n_old)
    hit[hit] = work.split[target[hit]] == DUPLICATE
    if not hit.any():
        return
    rows, orphans = new_rows[hit], target[hit]
    adopted, first = np.unique(orphans, return_index=True)  # rows ascend: the earliest
    keeper = np.full(work.n, -1, np.int64)
    keeper[adopted] = rows[first]
    work.duplicate_of[rows] = keeper[orphans]
    work.duplicate_of[rows[first]] = -1
    # The orphan and the other copies it stood in for (`_promote_duplicates_of`).
    old = np.flatnonzero(np.isin(work.duplicate_of[: work.n_old], adopted))
    work.duplicate_of[old] = keeper[work.duplicate_of[old]]
    work.duplicate_of[adopted] = rows[first]
    work.relinked = np.union1d(adopted, old)


@contextmanager
def _timed(timings: dict[str, float], step: str) -> Iterator[None]:
    """Adds the seconds a step takes to ``timings[step]`` (the round record's timings)."""
    clock = time.perf_counter()
    yield
    timings[step] = time.perf_counter() - clock


class BubbleFence:
    """Leak-resistant splitter: `ingest` one batch of embeddings per round."""

    def __init__(self, config: BubbleFenceConfig | None = None) -> None:
        self.config = config or BubbleFenceConfig()
        self._embeddings = np.empty((0, 0), np.float32)
        self._buffer: np.ndarray | None = None  # holds `_embeddings` and spare rows
        self._ids = np.empty(0, np.int64)
        self._split = np.empty(0, np.int8)
        self._anchor = np.empty(0, np.int64)
        self._shell = np.empty(0, np.int8)
        self._round = np.empty(0, np.int32)
        self._duplicate_of = np.empty(0, np.int64)
        self._labels: np.ndarray | None = None
        self._groups: np.ndarray | None = None
        self._regions: RegionIndex | None = None  # fitted on the first round
        self._region = np.empty(0, np.int64)  # per sample, -1 for duplicates
        self._anchors = AnchorTable()
        # The last round's index over its earlier rows, extended by the next round
        # (`follow.earlier_index`); a saved state keeps its cells and axes.
        self._earlier_index: CellIndex | None = None
        # A loaded state's index over its earlier rows (`CellIndex.structure`), restored
        # at its next round's first search (`_earlier`).
        self._index_structure: dict[str, np.ndarray] | None = None
        self.history: list[dict[str, Any]] = []

    # -- properties -------------------------------------------------------------------

    @property
    def dim(self) -> int | None:
        """The embeddings' dimension, None before the first round. A state whose samples
        were all deleted keeps it: its bubbles and regions are of that dimension."""
        return int(self._embeddings.shape[1]) or None

    @property
    def n_samples(self) -> int:
        return len(self._ids)

    @property
    def anchors(self) -> pd.DataFrame:
        table = self._anchors
        counts_val = np.bincount(self._anchor[self._split == VALIDATION], minlength=len(table))[
            : len(table)
        ]
        counts_test = np.bincount(self._anchor[self._split == TEST], minlength=len(table))[
            : len(table)
        ]
        return pd.DataFrame(
            {
                "anchor_id": np.arange(len(table)),
                "centre_id": [self._ids[r] if r >= 0 else None for r in table.centre_row],
                "radius": table.radius,
                "inner_radius": table.inner_radius,
                "layout": LAYOUT_NAMES[table.layout] if len(table) else [],
                "lid": table.lid,
                "round": table.round,
                "n_captured": table.n_captured,
                "cut_pairs": table.cut_pairs,
                "n_validation": counts_val,
                "n_test": counts_test,
                "centre": list(table.centres),
            }
        )

    # -- the round --------------------------------------------------------------------

    def ingest(
        self,
        embeddings: np.ndarray,
        ids: Sequence[Any] | None = None,
        labels: Sequence[Any] | None = None,
        groups: Sequence[Any] | None = None,
    ) -> RoundResult:
        """Assign a new batch: dedup, twins of assigned samples, existing bubbles, new
        bubbles to the quota (stratified by labels and regions), the rest train.

        BLAS runs on `neighbors.blas_threads()` threads for the round: as many as the
        machine has idle cores, so a busy machine does not stall on spinning threads.
        """
        rows = self.n_samples + len(embeddings)
        with threadpool_limits(limits=blas_threads(rows), user_api="blas"):
            return self._ingest(embeddings, ids, labels, groups)

    def _ingest(
        self,
        embeddings: np.ndarray,
        ids: Sequence[Any] | None,
        labels: Sequence[Any] | None,
        groups: Sequence[Any] | None,
    ) -> RoundResult:
        """The round, step by step; each step writes only the round's working copy, and
        the state changes at the commit, so a failing round leaves it as it was."""
        timings: dict[str, float] = {}
        with _timed(timings, "validate"):
            work = self._start_round(embeddings, ids, labels, groups, timings)
        with _timed(timings, "dedup"):
            self._set_duplicates_aside(work)
        with _timed(timings, "regions"):
            work.regions, work.region = self._regions_with(work.x, work.kept, work.new_kept, work.n)
        with _timed(timings, "twins"):
            self._bind_to_assigned(work)
        with _timed(timings, "existing_bubbles"):
            if work.components is not None:
                was_open = work.split[work.new_kept] == UNASSIGNED
                join_existing_bubbles(
                    work.x,
                    work.new_kept,
                    work.components,
                    work.split,
                    work.anchor,
                    work.shell,
                    self._anchors,
                )
                joined = was_open & (work.split[work.new_kept] != UNASSIGNED)
                work.bubble_joined = work.new_kept[joined]
                work.bubble_units = work.components[joined]
        with _timed(timings, "margins"):
            self._keep_margins(work)
        with _timed(timings, "new_bubbles"):
            self._grow_new_bubbles(work)
        with _timed(timings, "margin_shells"):
            self._balance_margin_joins(work)
        self._settle_the_rest(work)
        self._clear_new_bubbles(work)
        return self._commit(work)

    def _start_round(
        self,
        embeddings: np.ndarray,
        ids: Sequence[Any] | None,
        labels: Sequence[Any] | None,
        groups: Sequence[Any] | None,
        timings: dict[str, float],
    ) -> _Round:
        """The checked inputs and the round's working copy of the per-sample columns."""
        cfg = self.config
        x = self._validate_embeddings(embeddings)
        new_ids = self._validate_ids(ids, len(x))
        n_old, n_new = self.n_samples, len(x)
        new_labels = None if labels is None else encode_label_sets(labels)
        if new_labels is not None and len(new_labels) != n_new:
            raise ValueError(f"labels has {len(new_labels)} entries for {n_new} embeddings")
        new_groups = None if groups is None else encode_groups(groups)
        if new_groups is not None and len(new_groups) != n_new:
            raise ValueError(f"groups has {len(new_groups)} entries for {n_new} embeddings")
        all_groups = _append_optional(self._groups, new_groups, n_old, n_new)
        round_index = len(self.history)
        return _Round(
            index=round_index,
            rng=np.random.default_rng([cfg.seed, round_index]),
            x=self._rows_with(x),
            new_ids=new_ids,
            n_old=n_old,
            new_labels=new_labels,
            labels_given=labels is not None,
            split=np.concatenate([self._split, np.full(n_new, UNASSIGNED, np.int8)]),
            anchor=np.concatenate([self._anchor, np.full(n_new, -1, np.int64)]),
            shell=np.concatenate([self._shell, np.zeros(n_new, np.int8)]),
            duplicate_of=np.concatenate([self._duplicate_of, np.full(n_new, -1, np.int64)]),
            all_labels=_append_optional(self._labels, new_labels, n_old, n_new),
            all_groups=all_groups,
            codes=None if groups is None and self._groups is None else group_codes(all_groups),
            timings=timings,
        )

    def _set_duplicates_aside(self, work: _Round) -> None:
        """Step 2: a new sample at `dedup_threshold` of an earlier kept one is its duplicate."""
        cfg = self.config
        new_rows = work.new_rows
        if cfg.dedup_enabled:
            kept_old = np.flatnonzero(self._duplicate_of < 0)
            aware = cfg.class_aware and work.new_labels is not None and self._labels is not None
            dedup = find_duplicates(
                work.x[work.n_old :],
                work.x,
                kept_old,
                work.n_old,
                cfg.dedup_threshold,
                cfg.seed,
                new_labels=work.new_labels if cfg.class_aware else None,
                kept_labels=self._labels[kept_old] if aware else None,
                kept_index=self._earlier(work),
            )
            work.duplicate_of[new_rows] = dedup.duplicate_of
            work.batch_index = dedup.batch_index
            _adopt_orphans(work)
        work.split[new_rows[work.is_duplicate[new_rows]]] = DUPLICATE

    def _bind_to_assigned(self, work: _Round) -> None:
        """New samples linked to assigned ones (near twins, known groups) take their side.

        The new samples' components at the leak threshold bind them to assigned samples
        and bubbles; with nothing assigned and no groups, none is needed.
        """
        cfg = self.config
        new_kept, codes = work.new_kept, work.codes
        if work.n_old or codes is not None:
            index = self._new_index(work) if len(new_kept) > 1 else None
            work.components = self._components(work.x, new_kept, codes, cfg.leak_threshold, index)
        if codes is not None:
            known = follow_known_groups(
                codes,
                new_kept,
                np.flatnonzero(work.kept[: work.n_old]),
                work.split,
                work.anchor,
                work.shell,
                self._anchors.layout,
                cfg.validation_ratio,
            )
            work.stats["group_known"] = int(known.sum())
        work.stats.update(bound_to_twins=0, cut_pairs_twins=0, leaks_twins=0)
        if work.components is not None:
            work.stats.update(
                bind_to_assigned(
                    work.x,
                    new_kept,
                    work.components,
                    work.split,
                    work.anchor,
                    work.shell,
                    self._earlier(work),
                    cfg,
                )
            )

    def _keep_margins(self, work: _Round) -> None:
        """The open rows in units; those within the closure margin of assigned samples
        are fenced off as train's or join eval (`follow.keep_margins`)."""
        split, new_kept = work.split, work.new_kept
        open_rows = new_kept[split[new_kept] == UNASSIGNED]
        unit_of = self._units(work, open_rows)
        budget = self._budget(work)
        fenced, work.stats["margin_eval"] = keep_margins(
            work.x,
            open_rows,
            unit_of,
            split,
            work.anchor,
            work.shell,
            work.kept,
            work.n_old,
            self._earlier(work),
            self.config,
            room=budget.need + budget.slack,
        )
        work.stats["margin_train"] = int(fenced.sum())
        still = split[open_rows] == UNASSIGNED
        work.open_rows, work.unit_of, work.fenced = open_rows[still], unit_of[still], fenced[still]
        work.margin_joined, work.margin_units = open_rows[~still], unit_of[~still]

    def _budget(self, work: _Round) -> Budget:
        """The round's eval need and slack, as its samples stand now (`grow.round_budget`)."""
        # Kept samples only: a duplicate that followed its original into eval
        # (`dedup_policy` "follow") is in neither the share's numerator nor its base.
        evaluated = is_eval(work.split) & work.kept
        return round_budget(
            int(work.kept.sum()),
            int(evaluated.sum()),
            len(work.new_kept),
            int(evaluated[work.new_kept].sum()),
            self.config,
        )

    def _balance_margin_joins(self, work: _Round) -> None:
        """Units that joined eval through the margin, and twin components that joined an
        earlier bubble, change shell where the round left validation off target
        (`follow.balance_margin_joins`).

        Neither has a twin across the shells it may change, and a joiner's shell by its
        radius follows the bubble's inner radius, which groups or a fixed radius can
        stretch to the whole bubble: with `shell_layout` inner_val and groups, a second
        round's joiners went 555 to validation against 76 to test (validation 0.586 of
        eval against 0.5), and after `reconfigure(validation_ratio=0.1)` the rounds
        went on near the old ratio (0.41-0.47 of their eval; found by a stress test)."""
        joined, units = _joins(work)
        if len(joined) == 0:
            work.stats["margin_shells_moved"] = 0
            return
        work.stats["margin_shells_moved"] = balance_margin_joins(
            work.x,
            joined,
            units,
            work.split,
            work.anchor,
            work.shell,
            self._anchors.append(work.new_table),
            work.kept,
            work.n_old,
            self._earlier(work),
            self.config,
            SHELL_SECOND_PASS_SLACK,
        )

    def _grow_new_bubbles(self, work: _Round) -> None:
        """Steps 3-5: new bubbles, stratified by labels and regions, to the eval quota."""
        cfg = self.config
        x, split, kept, new_kept, n = work.x, work.split, work.kept, work.new_kept, work.n
        n_kept = int(kept.sum())
        budget = self._budget(work)
        open_rows, fenced = work.open_rows, work.fenced
        units = Units.from_labels(n, open_rows[~fenced], work.unit_of[~fenced])
        labels = work.all_labels if work.labels_given else None
        strata = Strata.build(self._strata_columns(labels, work.region, kept), kept, split, cfg)
        grower = BubbleGrower(
            x,
            split,
            kept,
            units,
            strata,
            self._anchors,
            budget,
            cfg,
            work.rng,
            work.index,
            indexes=lambda: self._kept_indexes(work),
            twin_groups=self._twin_groups(work),
            groups=work.codes,
        )
        if budget.need > 0 and len(open_rows):
            self._fill_quota(work, grower, open_rows, n_kept)
        work.stats["shells_recut"] = grower.balance_shells()
        work.new_table, grown_anchor, grown_shell, grow_stats = grower.result()
        grow_stats["cut_pairs"] += work.stats["cut_pairs_twins"]
        work.stats = {**grow_stats, **work.stats}
        grown = grown_anchor >= 0
        work.anchor[grown] = grown_anchor[grown]
        work.shell[grown] = grown_shell[grown]
        # min_eval_per_batch yields to the leak graph: only free samples can be held out.
        work.stats["floor_shortfall"] = max(
            0,
            eval_floor(cfg, len(new_kept))
            - int(((split == VALIDATION) | (split == TEST))[new_kept].sum()),
        )

    def _fill_quota(
        self, work: _Round, grower: BubbleGrower, open_rows: np.ndarray, n_kept: int
    ) -> None:
        """Strata first, within their caps; then within caps widened to the per-label
        tolerance, the margin's units, then the twin components; then past the caps, the
        margin's units, then the twin components; a unit too large for either side is
        cut last."""
        cfg, x, rng = self.config, work.x, work.rng
        projection = fit_projection(x, cfg.pca_dims, rng, rows=open_rows)
        reference = subsample(work.n, LID_REFERENCE, rng)
        reference = LidReference.of(x, reference[work.kept[reference]])

        def make_stream(rows: np.ndarray, expected: int) -> CandidateStream:
            return CandidateStream(x, rows, projection, reference, cfg, rng, expected)

        grower.serve_strata(make_stream)
        grower.fill(make_stream, beyond_caps=False)
        if grower.remaining > 0:
            grower.widen_caps()
            grower.fill(make_stream, beyond_caps=False)
        if grower.remaining <= 0 or cfg.unit_threshold >= cfg.leak_threshold:
            grower.fill(make_stream, within_caps=False)
            grower.cut(n_kept)
            return
        # The closure margin is a preference. Where its units are too coarse for the
        # strata's caps, the twin components of the samples still open (leak-free) serve
        # the strata first, those clear of train's margin (fenced rows: no unit); only
        # then may the margin's units, and last every twin component, pass the caps.
        # Every capture so far took whole twin components: the rows still open are
        # unions of both kinds of unit.
        margin = grower.units.component.copy()
        twins = self._twin_units(work, open_rows, margin)
        still_open = open_rows[work.split[open_rows] == UNASSIGNED]
        fenced = still_open[margin[still_open] < 0]
        clear = np.where(np.isin(twins, twins[fenced]), -1, twins)
        for unit_of, within_caps in ((clear, True), (margin, False), (twins, False)):
            if grower.remaining <= 0:
                break
            still_open = open_rows[work.split[open_rows] == UNASSIGNED]
            still_open = still_open[unit_of[still_open] >= 0]
            units = Units.from_labels(work.n, still_open, unit_of[still_open])
            grower.use_units(units, self._twin_groups(work) if unit_of is margin else None)
            grower.fill(make_stream, within_caps=within_caps, beyond_caps=not within_caps)
        grower.cut(n_kept)

    def _settle_the_rest(self, work: _Round) -> None:
        """Everything not held out is train; duplicates follow their original when the
        policy says so; groups settle what remains (they win)."""
        split, anchor, shell, new_rows = work.split, work.anchor, work.shell, work.new_rows
        split[split == UNASSIGNED] = TRAIN
        if self.config.dedup_policy == "follow":
            followers = new_rows[work.is_duplicate[new_rows]]
            originals = work.duplicate_of[followers]
            split[followers] = split[originals]
            anchor[followers] = anchor[originals]
            shell[followers] = shell[originals]
        if work.codes is not None:
            # Members linked above never straddle, and this settles the rest (duplicates
            # that followed an original of another group, cut components).
            follower = (work.duplicate_of[new_rows] >= 0) & (split[new_rows] != DUPLICATE)
            before = split.copy()
            moves = resolve_round(
                work.codes,
                np.arange(work.n_old),
                new_rows,
                follower,
                split,
                anchor,
                shell,
                self._anchors.append(work.new_table).layout,
                self.config.validation_ratio,
            )
            work.stats.update({f"group_{k}": v for k, v in moves.items()})
            changed = split[new_rows] != before[new_rows]
            indexes, threshold = self._kept_indexes(work), self.config.leak_threshold
            change = crossings_changed(
                work.x, new_rows[changed & work.kept[new_rows]], before, split, indexes, threshold
            )
            work.stats["cut_pairs_groups"] = change
            work.stats["cut_pairs"] = work.stats.get("cut_pairs", 0) + change
        if self.config.dedup_policy == "follow":
            followers = new_rows[work.is_duplicate[new_rows]]
            with_original = split[followers] == split[work.duplicate_of[followers]]
            work.stats["duplicates_with_original"] = int(with_original.sum())
            change = self._copy_crossings(work)
            work.stats["cut_pairs_copies"] = change
            work.stats["cut_pairs"] = work.stats.get("cut_pairs", 0) + change

    def _copy_crossings(self, work: _Round) -> int:
        """Twin pairs across either line between a duplicate that has a split (policy
        `follow`) and a sample of this round: the round's copies against every sample
        with a split, the round's kept samples against earlier copies. Every other
        search (twins, bubbles, groups) sees kept samples alone, and a copy's near twins
        are not all its original's: one beside its original crossed what its original
        did not (at `dedup_threshold` 0.99, 148 pairs of 65,336), and copies a group's
        vote parted from their original crossed the others (a family of 828 copies of
        one frame: 1,799 pairs, found by a stress test). So `cut_pairs` sums to every
        crossing pair of the samples with a split, copies included."""
        split = work.split
        placed = (split == TRAIN) | (split == VALIDATION) | (split == TEST)
        copies = np.flatnonzero(placed & (work.duplicate_of >= 0))
        new_copies, old_copies = copies[copies >= work.n_old], copies[copies < work.n_old]
        new_kept = work.new_rows[placed[work.new_rows] & (work.duplicate_of[work.new_rows] < 0)]
        threshold = self.config.leak_threshold
        indexes = self._kept_indexes(work)
        return crossings_of(
            work.x, new_copies, split, indexes, threshold, others=old_copies
        ) + crossings_between(work.x, new_kept, old_copies, split, threshold)

    def _clear_new_bubbles(self, work: _Round) -> None:
        """The new bubbles' balls end before any train sample (`bubbles.clear_of_train`):
        later rounds hold out what falls inside them."""
        table = work.new_table
        if table is None or len(table) == 0:
            return
        table.radius, table.inner_radius = clear_of_train(
            table, work.x, self._kept_indexes(work), work.split == TRAIN
        )

    def _commit(self, work: _Round) -> RoundResult:
        """The round's working copy becomes the state, and its record the history's."""
        first_anchor = len(self._anchors)
        n_new = work.n - work.n_old
        self._embeddings = work.x
        self._ids = np.concatenate([self._ids, work.new_ids]) if work.n_old else work.new_ids
        self._split, self._anchor, self._shell = work.split, work.anchor, work.shell
        self._duplicate_of = work.duplicate_of
        self._round = np.concatenate([self._round, np.full(n_new, work.index, np.int32)])
        self._labels, self._groups = work.all_labels, work.all_groups
        self._regions, self._region = work.regions, work.region
        self._anchors = self._anchors.append(work.new_table)
        self._earlier_index = work.kept_index if work.earlier_index is None else work.earlier_index
        self._index_structure = None
        record = self._round_record(work.index, work.new_rows, work.stats, work.timings)
        self.history.append(record)
        result = self._result(work.new_rows, work.index, first_anchor, record)
        if work.relinked is not None:
            result.relinked_ids = self._ids[work.relinked]
        return result

    def _earlier(self, work: _Round) -> CellIndex | None:
        """One index over the kept rows of earlier rounds, built at its first use in the
        round and searched by dedup, the twins and the closure margin at their own
        thresholds (`CellIndex.at`); None in the first round."""
        if work.earlier_index is None:
            if self._earlier_index is None and self._index_structure is not None:
                self._earlier_index = CellIndex.restored(
                    work.x, self._index_structure, self.config.leak_threshold
                )
                self._index_structure = None
            work.earlier_index = earlier_index(
                work.x, work.kept, work.n_old, self.config, self._earlier_index
            )
        return work.earlier_index

    def _kept_indexes(self, work: _Round) -> list[CellIndex]:
        """Indexes that together hold every kept row, for the new bubbles' neighbours:
        round 0's index over its units, else the earlier rows' index and one over the
        round's new kept rows (small beside it)."""
        if work.kept_index is not None:
            return [work.kept_index]
        earlier = self._earlier(work)
        indexes = [] if earlier is None else [earlier]
        if len(work.new_kept):
            indexes.append(self._new_index(work))
        return indexes

    def _new_index(self, work: _Round) -> CellIndex:
        """One index over the round's new kept rows, built at its first use: the twins
        that bind them to assigned samples and the new bubbles' neighbours search it."""
        if work.new_index is None:
            cfg = self.config
            work.new_index = CellIndex(work.x, work.new_kept, cfg.leak_threshold, cfg.seed)
        return work.new_index

    def _units(self, work: _Round, open_rows: np.ndarray) -> np.ndarray:
        """Component labels of the open rows at `closure_threshold` (the units bubbles
        capture): the twin components themselves unless the closure is looser.

        In a first round whose open rows are every kept row, their index is the one the
        next round searches its earlier rows with: it is kept (`_commit`).
        """
        cfg = self.config
        if work.components is not None and cfg.unit_threshold >= cfg.leak_threshold:
            return work.components[np.searchsorted(work.new_kept, open_rows)]
        index = None
        if work.n_old == 0 and len(open_rows) > 1 and len(open_rows) == int(work.kept.sum()):
            index = work.kept_index = self._first_round_index(work, open_rows)
        return self._components(work.x, open_rows, work.codes, cfg.unit_threshold, index)

    def _first_round_index(self, work: _Round, kept_rows: np.ndarray) -> CellIndex:
        """An index over a first round's kept rows: the cells and axes dedup searched
        every row of the round with, less the duplicates (`CellIndex.restored`: any
        cells keep a search exact, and measuring them costs a third of fitting them),
        else a fresh one."""
        cfg = self.config
        if work.batch_index is not None:
            # Round 0: the batch's positions are the rows; a duplicate's is dropped.
            kept_row = np.full(work.n, -1, np.int64)
            kept_row[kept_rows] = kept_rows
            structure = CellIndex.structure_without(work.batch_index.structure(), kept_row)
            if structure is not None:
                index = CellIndex.restored(work.x, structure, cfg.unit_threshold)
                if index is not None and np.array_equal(index.rows, kept_rows):
                    return index
        return CellIndex(work.x, kept_rows, cfg.unit_threshold, cfg.seed)

    def _twin_groups(self, work: _Round) -> Callable[[np.ndarray], np.ndarray] | None:
        """Rows -> their twin components (a group's members linked), for the shells of
        bubbles whose units are coarser than the twins; None when they are not."""
        cfg = self.config
        if cfg.unit_threshold >= cfg.leak_threshold:
            return None
        if work.components is not None:
            return lambda rows: work.components[np.searchsorted(work.new_kept, rows)]
        return lambda rows: self._components(work.x, rows, work.codes, cfg.leak_threshold)

    def _twin_units(self, work: _Round, open_rows: np.ndarray, closure: np.ndarray) -> np.ndarray:
        """Per row, its twin component (a group's members linked) for `open_rows`, -1
        elsewhere: the round's own components, or in a first round those of its kept
        rows, searched with the index of its units. `closure`: per row, its unit at the
        closure threshold; where each open row is a unit of its own (no structure at
        that scale), each is its own twin component too, with no search."""
        twins = np.full(work.n, -1, np.int64)
        if work.components is not None:
            twins[open_rows] = work.components[np.searchsorted(work.new_kept, open_rows)]
            return twins
        if len(np.unique(closure[open_rows])) == len(open_rows):
            twins[open_rows] = open_rows
            return twins
        index = work.kept_index
        if index is None or not np.array_equal(index.rows, open_rows):
            index = None
        twins[open_rows] = self._components(
            work.x, open_rows, work.codes, self.config.leak_threshold, index
        )
        return twins

    def _components(
        self,
        all_x: np.ndarray,
        rows: np.ndarray,
        codes: np.ndarray | None,
        threshold: float,
        index: CellIndex | None = None,
    ) -> np.ndarray:
        """Components of `rows` in the twin graph at `threshold`, a group's members linked
        (searched with `index` when given: an index over exactly `rows`)."""
        links = group_links(codes, rows)
        return twin_components(all_x, rows, threshold, self.config.seed, links, index)

    def _regions_with(
        self, all_x: np.ndarray, kept: np.ndarray, new_kept: np.ndarray, n: int
    ) -> tuple[RegionIndex, np.ndarray]:
        """The region index (fitted on the first round with samples, and again while fewer
        than `regions.MIN_FIT_ROWS` were kept before) and every row's region."""
        region = np.concatenate([self._region, np.full(n - len(self._region), -1, np.int64)])
        regions = self._regions
        if regions is not None and np.count_nonzero(region >= 0) < MIN_FIT_ROWS:
            regions, region[:] = None, -1
        unplaced = np.flatnonzero(kept & (region < 0))
        if regions is None:
            regions = RegionIndex.fit(all_x, self.config.seed, rows=unplaced)
        if len(unplaced):
            regions, region[unplaced] = regions.assign(all_x, unplaced, self.config.seed)
        return regions, region

    def _strata_columns(
        self, labels: np.ndarray | None, region: np.ndarray, kept: np.ndarray
    ) -> list[sparse.csr_matrix]:
        """Sample x stratum matrices: the labels worth pursuing (with labels), then regions."""
        columns = []
        cfg = self.config
        if labels is not None and cfg.label_aware:
            index = LabelIndex.from_encoded(labels)
            counts = index.counts(kept)
            # Labels half-way to min_label_count are pursued already: one that reaches the
            # threshold in a later round then has eval among its earlier samples.
            pursued = np.flatnonzero(counts >= math.ceil(cfg.min_label_count / 2))
            columns.append(index.matrix[:, pursued].tocsr())
        rows = np.flatnonzero(region >= 0)
        n_regions = int(region.max()) + 1 if len(rows) else 0
        columns.append(
            sparse.csr_matrix(
                (np.ones(len(rows), np.int64), (rows, region[rows])),
                shape=(len(region), n_regions),
            )
        )
        return columns

    # -- reading the state ----------------------------------------------------------

    def summary(self) -> dict[str, Any]:
        kept = self._duplicate_of < 0
        counts = {
            str(name): int(np.sum(self._split == code)) for code, name in enumerate(SPLIT_NAMES)
        }
        # Shares are of the kept samples (the quota's base), duplicates that followed
        # their original (`dedup_policy` "follow") left out of both sides; `counts` has them.
        n_eval = int(np.sum(is_eval(self._split) & kept))
        out = {
            "n_samples": self.n_samples,
            "counts": counts,
            "eval_share": n_eval / max(int(kept.sum()), 1),
            "validation_share_of_eval": int(np.sum((self._split == VALIDATION) & kept))
            / max(n_eval, 1),
            "n_eval": n_eval,
            # Eval samples that later rounds' bridges made leak, summed over the rounds: each
            # round counts those that did not leak yet (`contested.py`; estimated only where
            # a sample has more than `MAX_EVAL_TWINS` eval twins).
            "bridge_leaks": sum(int(r.get("leaks_twins", 0)) for r in self.history),
            "n_anchors": len(self._anchors),
            "rounds": self.history,
            "targets": {
                "eval_ratio": self.config.eval_ratio,
                "eval_tolerance": self.config.eval_tolerance,
                "validation_ratio": self.config.validation_ratio,
            },
        }
        if self._labels is not None:
            cfg = self.config
            out["labels"] = label_summary(
                self._labels, self._split, kept, cfg.eval_ratio, cfg.min_label_count
            )
        if self._groups is not None:
            out["groups"] = group_summary(self._groups, SPLIT_NAMES[self._split])
        return out

    def label_shares(self) -> pd.DataFrame:
        """Per label (rarest first): kept samples, train/validation/test counts, eval share."""
        if self._labels is None:
            raise ValueError("no labels: pass labels to ingest to get per-label shares")
        kept = self._duplicate_of < 0
        return label_shares(self._labels, self._split, kept, self.config.min_label_count)

    def assignments(self) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "id": self._ids,
                "split": SPLIT_NAMES[self._split] if self.n_samples else [],
                "anchor_id": self._anchor,
                "shell": SHELL_NAMES[self._shell] if self.n_samples else [],
                "round": self._round,
                "duplicate_of": self._duplicate_ids(np.arange(self.n_samples)),
            }
        )

    def reconfigure(self, **changes: Any) -> None:
        """Change knobs for later rounds; those that would change the meaning of
        earlier assignments are refused once samples are held."""
        new = self.config.replace(**changes)
        frozen = frozen_changes(self.config, new)
        if frozen and self.n_samples:
            raise ValueError(
                f"{frozen} cannot change after the first round: {frozen_message(frozen)}; "
                "reset the state"
            )
        self.config = new

    def relabel(
        self, labels: Sequence[Any] | None = None, groups: Sequence[Any] | None = None
    ) -> None:
        """The labels and groups of the samples held, one per row of `assignments()`, as
        the data has them now (None: as they are): a label or group field first given
        after the first round, another field, or values edited since.

        No sample moves. Later rounds go by them: a new member takes its group's side
        (the majority of the group's samples held), the quota counts each label's eval
        samples, and the summary reports them. Without this, the samples of earlier
        rounds keep what those rounds were given (nothing, where no field was): a group
        field first given in a later round was followed by the group's new members
        alone, and the round reported no group on both sides where 47 of 50 were.
        """
        n = self.n_samples
        encoded = {}
        for name, values, encode in (
            ("labels", labels, encode_label_sets),
            ("groups", groups, encode_groups),
        ):
            if values is None:
                continue
            encoded[name] = encode(values)
            if len(encoded[name]) != n:
                raise ValueError(f"{name} has {len(encoded[name])} entries for {n} samples held")
        if "labels" in encoded:
            self._labels = encoded["labels"]
        if "groups" in encoded:
            self._groups = encoded["groups"]

    def forget(self, ids: Sequence[Any]) -> int:
        """Drop samples (deleted from the dataset, excluded) from the state; returns how many.

        A duplicate whose original is dropped takes its place (`_promote_duplicates_of`):
        the earliest of the original's duplicates that stay inherits its split, bubble,
        shell and region, and the others become its duplicates. Kept as a duplicate of
        nothing, the image would leave every split with its original (and an original
        included again would then be set aside as its duplicate). The heir is the
        original's twin at `dedup_threshold`, so its twins at `leak_threshold` are the
        original's, on its side; the exception, a sample whose similarity to one is at
        the leak threshold and to the other just below it (a sliver that their own
        similarity bounds), would cross uncounted in ``cut_pairs``.
        """
        drop = np.isin(self._ids, np.asarray(list(ids), dtype=self._ids.dtype))
        if not drop.any():
            return 0
        self._promote_duplicates_of(drop)
        keep_rows = np.flatnonzero(~drop)
        new_index = np.full(self.n_samples, -1, np.int64)
        new_index[keep_rows] = np.arange(len(keep_rows))
        dup = self._duplicate_of[keep_rows]
        self._duplicate_of = np.where(dup >= 0, new_index[np.maximum(dup, 0)], -1)
        for name in ("_embeddings", "_ids", "_split", "_anchor", "_shell", "_round", "_region"):
            setattr(self, name, getattr(self, name)[keep_rows])
        self._buffer = None
        # The index keeps its cells for the rows left, renumbered (`_index_structure`).
        structure = self._kept_index_structure()
        if structure is not None:
            structure = CellIndex.structure_without(structure, new_index)
        self._earlier_index, self._index_structure = None, structure
        for name in ("_labels", "_groups"):
            if getattr(self, name) is not None:
                setattr(self, name, getattr(self, name)[keep_rows])
        rows = self._anchors.centre_row
        self._anchors.centre_row = np.where(rows >= 0, new_index[np.maximum(rows, 0)], -1)
        return int(drop.sum())

    def _promote_duplicates_of(self, drop: np.ndarray) -> None:
        """`forget`'s heirs: for each dropped original, the earliest of its kept duplicates
        that can sit where the original sat (`_choose_heirs`) takes its place, and
        the original's other duplicates point to it. An heir that already has a split (a
        follower, policy ``follow``) keeps it; one that is a "duplicate" takes the
        original's split, bubble, shell and region. With no heir that fits, the earliest
        stands in, a duplicate of nothing, and the others are its duplicates."""
        orphans = np.flatnonzero(~drop & (self._duplicate_of >= 0))
        orphans = orphans[drop[self._duplicate_of[orphans]]]
        if len(orphans) == 0:
            return
        originals = self._duplicate_of[orphans]
        heirs, gone = self._choose_heirs(orphans, originals, drop)
        inheriting = self._split[heirs] == DUPLICATE
        for name in ("_split", "_anchor", "_shell", "_region"):
            values = getattr(self, name).copy()  # a loaded state's arrays may be read-only
            values[heirs[inheriting]] = values[gone[inheriting]]
            setattr(self, name, values)
        # An original without an heir that fits: its earliest orphan stands in, still a
        # "duplicate" (of nothing), the others its duplicates, so that the original
        # included again adopts them all (`_adopt_orphans`).
        all_gone, first = np.unique(originals, return_index=True)  # orphans ascend
        heir_of = np.full(self.n_samples, -1, np.int64)
        heir_of[all_gone] = orphans[first]
        heir_of[gone] = heirs
        duplicate_of = self._duplicate_of.copy()
        duplicate_of[orphans] = heir_of[originals]
        duplicate_of[heir_of[all_gone]] = -1
        self._duplicate_of = duplicate_of
        # The index kept over the earlier kept rows lacks the heirs: the next round sees
        # its rows are not a prefix of the kept ones and builds one anew (`earlier_index`).

    def _choose_heirs(
        self, orphans: np.ndarray, originals: np.ndarray, drop: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """(heirs, their originals): per dropped original, its earliest orphan that fits.

        One fits if it is a "duplicate" whose group lets it take the original's split
        (no group, or one whose held samples, heirs chosen before it included, all have
        that split: the original's own group too, which an heir of another original of
        the same call may have given the other side; found by a core fuzz, a group then
        straddled train and eval), or a follower (policy ``follow``) already in
        the original's split. A follower that its group's vote put elsewhere keeps its
        place either way, but is no heir: the other duplicates do not point to it (its
        near twins across the line, a duplicate's, are not counted in ``cut_pairs``).
        Orphans are few (duplicates of dropped originals): one at a time."""
        codes = group_codes(self._groups) if self._groups is not None else np.full(len(drop), -1)
        split = self._split
        held = ~drop & (split != DUPLICATE) & (split != UNASSIGNED) & (codes >= 0)
        sides: dict[int, set[int]] = {}
        for code, side in zip(codes[held].tolist(), split[held].tolist(), strict=True):
            sides.setdefault(code, set()).add(side)
        heirs, gone = [], []
        for row, original in zip(orphans.tolist(), originals.tolist(), strict=True):
            if original in gone:  # orphans ascend: this original's earliest fit is taken
                continue
            place = int(split[original])
            if split[row] != DUPLICATE:
                fits = int(split[row]) == place
            else:
                group = int(codes[row])
                fits = group < 0 or sides.get(group, {place}) == {place}
                if fits and group >= 0:
                    sides.setdefault(group, set()).add(place)
            if fits:
                heirs.append(row)
                gone.append(original)
        return np.asarray(heirs, np.int64), np.asarray(gone, np.int64)

    def _kept_index_structure(self) -> dict[str, np.ndarray] | None:
        """The structure of the index over the earlier rows: the one in memory, else the
        one a loaded state brought and no round has restored yet."""
        if self._earlier_index is not None:
            return self._earlier_index.structure()
        return self._index_structure

    # -- persistence ------------------------------------------------------------------

    def state_dict(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        meta = {"config": self.config.to_dict(), "history": self.history, "dim": self.dim}
        arrays = {
            "embeddings": self._embeddings,
            "ids": self._ids,
            "split": self._split,
            "anchor": self._anchor,
            "shell": self._shell,
            "round": self._round,
            "duplicate_of": self._duplicate_of,
        }
        for name in ("labels", "groups"):
            value = getattr(self, f"_{name}")
            if value is not None:
                arrays[name] = value
        if self._regions is not None:
            arrays["region"] = self._region
            arrays["region_centres"] = self._regions.centres
            meta["region_join_distance"] = self._regions.join_distance
        for name in AnchorTable.__dataclass_fields__:
            arrays[f"anchor_{name}"] = getattr(self._anchors, name)
        structure = self._kept_index_structure()
        # The index over the earlier rows, so that a loaded state's next round does not
        # fit it again (7.4 s at 1M rows); a state with fewer samples than the index has
        # axes builds it in a blink, and its axes would not pass `check_layout`.
        if structure is not None and len(structure["axes"]) <= self.n_samples:
            arrays.update({f"{INDEX_PREFIX}{name}": a for name, a in structure.items()})
        return meta, arrays

    @classmethod
    def from_state_dict(cls, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> BubbleFence:
        columns = ("embeddings", "ids", "split", "anchor", "shell", "round", "duplicate_of")
        bubble_columns = [f"anchor_{name}" for name in AnchorTable.__dataclass_fields__]
        missing = [name for name in (*columns, *bubble_columns) if name not in arrays]
        if missing:
            raise damaged("the BubbleFence state", f"no {missing} arrays", "reset and re-run")
        bf = cls(BubbleFenceConfig.from_dict(meta["config"]))
        bf.history = list(meta["history"])
        for name in columns:
            setattr(bf, f"_{name}", np.asarray(arrays[name]))
        bf._buffer = claim_buffer(bf._embeddings)  # rows read with room after them
        bf._labels = arrays.get("labels")
        bf._groups = arrays.get("groups")
        if "region_centres" in arrays:
            bf._regions = RegionIndex(
                np.asarray(arrays["region_centres"], np.float32),
                float(meta["region_join_distance"]),
            )
            bf._region = np.asarray(arrays["region"], np.int64)
        else:
            # A state from before regions: they are fitted on its samples at the next round.
            bf._region = np.full(len(bf._ids), -1, np.int64)
        bf._anchors = AnchorTable(
            **{
                name: np.asarray(arrays[f"anchor_{name}"])
                for name in AnchorTable.__dataclass_fields__
            }
        )
        structure = {
            name[len(INDEX_PREFIX) :]: np.asarray(a)
            for name, a in arrays.items()
            if name.startswith(INDEX_PREFIX)
        }
        bf._index_structure = structure or None
        return bf

    def save(self, path: str | Path) -> None:
        write_state(path, *self.state_dict())

    @classmethod
    def load(cls, path: str | Path) -> BubbleFence:
        return cls.from_state_dict(*read_state(path))

    # -- helpers ----------------------------------------------------------------------

    def _validate_embeddings(self, embeddings: np.ndarray) -> np.ndarray:
        x = np.asarray(embeddings)
        if x.ndim != 2:
            raise ValueError(f"embeddings must be a 2-D array (n, d), got shape {x.shape}")
        if len(x) == 0:
            raise ValueError("embeddings is empty: a round needs at least one sample")
        if self.dim is not None and x.shape[1] != self.dim:
            raise ValueError(
                f"embeddings have dimension {x.shape[1]}, but the state holds dimension "
                f"{self.dim}; embeddings of another model cannot be mixed (reset the state)"
            )
        return x

    def _rows_with(self, x: np.ndarray) -> np.ndarray:
        """The earlier rows followed by `x` scaled to unit length, as one array.

        The rows live in a buffer with spare capacity (`state.buffer_with_room`; a
        loaded state's rows were read into one, `state.rows_with_room`), so a round
        appends without copying the earlier rows (at 1M x 512 a copy is 2 GB more at
        peak). Rows past `n_samples` are scratch until the round commits, so a failed
        round leaves the state as it was.
        """
        n_old, n = self.n_samples, self.n_samples + len(x)
        buffer = self._buffer
        if buffer is None or len(buffer) < n or buffer.shape[1] != x.shape[1]:
            buffer = buffer_with_room(n, x.shape[1])
            if n_old:
                buffer[:n_old] = self._embeddings
            self._buffer = buffer
        unit_rows(x, out=buffer[n_old:n])
        return buffer[:n]

    def _validate_ids(self, ids: Sequence[Any] | None, n: int) -> np.ndarray:
        if ids is None:
            if self.n_samples and self._ids.dtype.kind != "i":
                raise ValueError("ids are required: earlier rounds used explicit ids")
            start = int(self._ids.max()) + 1 if self.n_samples else 0
            return np.arange(start, start + n, dtype=np.int64)
        new_ids = np.asarray(list(ids))
        if len(new_ids) != n:
            raise ValueError(f"ids has {len(new_ids)} entries for {n} embeddings")
        if self.n_samples and new_ids.dtype.kind != self._ids.dtype.kind:
            raise ValueError("ids must be of the same type as in earlier rounds")
        unique, counts = np.unique(new_ids, return_counts=True)
        if (counts > 1).any():
            raise ValueError(f"ids repeat within the batch: {unique[counts > 1][:10].tolist()}")
        seen = np.isin(new_ids, self._ids) if self.n_samples else np.zeros(n, bool)
        if seen.any():
            raise ValueError(f"ids already ingested: {new_ids[seen][:10].tolist()}")
        return new_ids

    def _duplicate_ids(self, rows: np.ndarray) -> np.ndarray:
        dup = self._duplicate_of[rows]
        out = np.full(len(rows), None, dtype=object)
        out[dup >= 0] = self._ids[dup[dup >= 0]]
        return out

    def _round_record(
        self, round_index: int, rows: np.ndarray, stats: dict[str, Any], timings: dict
    ) -> dict[str, Any]:
        counts = {
            str(name): int(np.sum(self._split[rows] == code))
            for code, name in enumerate(SPLIT_NAMES)
        }
        summary = self.summary()
        return {
            "round": round_index,
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "n_new": len(rows),
            "counts": counts,
            "eval_share": summary["eval_share"],
            **{k: int(v) for k, v in stats.items()},
            **{k: summary[k] for k in ("labels", "groups") if k in summary},
            "seconds": {k: round(v, 4) for k, v in timings.items()},
        }

    def _result(
        self, rows: np.ndarray, round_index: int, first_anchor: int, record: dict
    ) -> RoundResult:
        return RoundResult(
            ids=self._ids[rows],
            split=SPLIT_NAMES[self._split[rows]],
            anchor_id=self._anchor[rows].copy(),
            shell=SHELL_NAMES[self._shell[rows]],
            duplicate_of=self._duplicate_ids(rows),
            round=round_index,
            new_anchor_ids=list(range(first_anchor, len(self._anchors))),
            stats=record,
        )


def _joins(work: _Round) -> tuple[np.ndarray, np.ndarray]:
    """The rows that joined eval through the margin or an earlier bubble, and their units:
    the margin's closure units as they are, the bubble joiners' twin components as
    negative ids, so the two kinds never share one."""
    joined = [r for r in (work.margin_joined, work.bubble_joined) if r is not None]
    if not joined:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    units = []
    if work.margin_joined is not None:
        units.append(np.asarray(work.margin_units, np.int64))
    if work.bubble_joined is not None:
        units.append(-1 - np.asarray(work.bubble_units, np.int64))
    return np.concatenate(joined), np.concatenate(units)


def _append_optional(
    old: np.ndarray | None, new: np.ndarray | None, n_old: int, n_new: int
) -> np.ndarray | None:
    if old is None and new is None:
        return None
    old = np.full(n_old, "", dtype=str) if old is None else old
    new = np.full(n_new, "", dtype=str) if new is None else new
    return np.concatenate([old.astype(str), new.astype(str)])
