"""Labels and groups in one ingestion round (SPEC 2, "Labels and groups").

`BubbleFence.ingest` calls three hooks when a round has labels (and `label_aware`) or
groups; without them the round runs exactly as before.

1. `RoundConstraints.start`, after the existing bubbles: new samples of known groups
   take their group's side (`groups.follow_known_groups`), and the eval count the quota
   starts from is corrected to what the group votes will make of it.
2. `RoundConstraints.grow`, instead of one `quota.grow_bubbles` call, in phases:

   * **labels** (with labels): candidates among the open samples of the labels still
     below their eval target (round(eval_ratio * n)), rarest label first
     (`LabelFirstStream`); a label stops at eval_ratio + eval_tolerance / 2 of its samples.
     Labels with at least half of `min_label_count` samples are pursued, so that a label
     reaching the threshold in a later round has eval among its earlier samples.
   * **capped** (with labels): the usual candidate stream for what the quota still needs,
     with every pursued label capped at eval_ratio + level * eval_tolerance, level 1, 2,
     4 then 8: what labels cannot take without leaking (dense labels where no clean cut
     exists) is spread over the others rather than piled onto a few.
   * **whole_groups** (groups without labels): the usual stream.
   * **fill**: the usual stream, clean then least-crossed cuts, no caps: the overall
     quota comes before labels. After the phases above it only keeps the eval share
     within half the tolerance of the target.

   Every phase but the fill takes clean cuts only and never cuts into a group it cannot
   win. A `CaptureGuide` makes `grow_bubbles` count what a bubble is *worth*: a group's
   members count once the group's majority is inside (then all of them, at once), so the
   quota is met in whole groups and a bubble that would push the eval share or a label
   past its cap is cut before it. With labels and `shell_layout="random"`, new bubbles
   are then turned (inner_val <-> inner_test) where that gives a label its first
   validation or test sample.
3. `RoundConstraints.finish`, after "everything left is train": every group is resolved
   by `groups.resolve_round`, which gives zero group violations whatever the bubbles did.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import sparse

from .anchors import CandidateStream, fit_projection
from .assign import (
    DUPLICATE,
    INNER,
    INNER_TEST,
    INNER_VAL,
    TEST,
    UNASSIGNED,
    VALIDATION,
    AnchorTable,
)
from .config import BubbleFenceConfig
from .groups import follow_known_groups, group_codes, is_eval, resolve_round
from .labels import LabelIndex, label_targets
from .quota import Budget, grow_bubbles

GrowResult = tuple[AnchorTable, np.ndarray, np.ndarray, dict]
# Label caps of the capped fill phases, as eval_ratio + level * eval_tolerance: what the
# labels cannot take without leaking is spread over the others before caps are dropped.
CAP_LEVELS = (1, 2, 4, 8)
# How far from validation_ratio turning bubbles for label coverage may take val/(val+test).
BALANCE_SLACK = 0.02
# The label phase stops a label at half the tolerance above its target, as the quota
# controller does overall (`quota._slack`): bubbles overshoot, later rounds add more.
LABEL_PHASE_LEVEL = 0.5


class CaptureGuide:
    """What capturing samples is worth, for `quota.grow_bubbles` (its `guide` argument).

    The open samples of a round belong to *units*: a group's new members, or one sample
    without a group. A unit counts toward the quota, with all its members and their
    labels, once at least half of its members are eval (the group vote, ties to eval).

    `grow_bubbles` asks, per candidate: `skip(row)` (label phase: the centre carries no
    label still short of its target), `cut_limit(ranked, is_open, allowed)` (the widest
    cut whose worth stays within `allowed`, with `caps` within every label's cap, with
    `whole_groups` short of any group it cannot win), and after accepting a bubble
    `accepted(members)`, which returns its worth. `strict_only` skips its relaxed pass.
    """

    def __init__(
        self,
        split: np.ndarray,
        kept: np.ndarray,
        candidates: np.ndarray,
        codes: np.ndarray | None,
        labels: LabelIndex | None,
        config: BubbleFenceConfig,
    ) -> None:
        self.label_phase = False
        self.caps = False
        self.strict_only = False  # clean cuts only (no least-crossed pass)
        self.whole_groups = False  # no cut into a group the bubble cannot win
        self._grouped = codes is not None
        self._unit = np.full(len(split), -1, dtype=np.int64)
        if codes is None:
            unit = np.arange(len(candidates), dtype=np.int64)
        else:
            own = codes[candidates]
            grouped = own >= 0
            unit = np.empty(len(candidates), dtype=np.int64)
            _, unit[grouped] = np.unique(own[grouped], return_inverse=True)
            n_grouped = int(unit[grouped].max()) + 1 if grouped.any() else 0
            unit[~grouped] = n_grouped + np.arange(int(np.sum(~grouped)))
        self._unit[candidates] = unit
        n_units = int(unit.max()) + 1 if len(unit) else 0
        self._size = np.bincount(unit, minlength=n_units)
        eval_now = is_eval(split[candidates])
        self._inside = np.bincount(unit[eval_now], minlength=n_units)
        self._counted = 2 * self._inside >= self._size
        # The group votes will turn the eval samples of this round into this many.
        self.eval_correction = int(self._size[self._counted].sum() - self._inside.sum())

        self._labels = labels
        if labels is not None:
            targets = label_targets(labels, kept, config.eval_ratio, config.eval_tolerance)
            members = sparse.csr_matrix(
                (np.ones(len(candidates), np.int64), (unit, np.arange(len(candidates)))),
                shape=(n_units, len(candidates)),
            )
            self._unit_labels = (members @ labels.matrix[candidates]).tocsr()
            settled = np.ones(len(split), bool)
            settled[candidates] = False
            self._eval = labels.counts(kept & settled & is_eval(split)) + np.asarray(
                self._unit_labels.T @ self._counted.astype(np.int64)
            ).reshape(-1)
            self._target = targets.target
            self._cap = targets.cap
            # Labels half-way to min_label_count are pursued already: a label that reaches
            # the threshold in a later round then has eval among its earlier samples too.
            self.pursued = targets.n >= math.ceil(config.min_label_count / 2)
            self.label_counts = targets.n
            self._ratio, self._tolerance = config.eval_ratio, config.eval_tolerance

    def set_cap_level(self, level: float) -> None:
        """Caps each label at (eval_ratio + level * eval_tolerance) of it, at least its target."""
        share = self._ratio + level * self._tolerance
        self._cap = np.maximum(np.floor(share * self.label_counts + 1e-9), self._target)

    # -- what grow_bubbles calls ---------------------------------------------------------

    def skip(self, row: int) -> bool:
        if not self.label_phase or self._labels is None:
            return False
        matrix = self._labels.matrix
        own = matrix.indices[matrix.indptr[row] : matrix.indptr[row + 1]]
        return not np.any(self.pursued[own] & (self.deficit(own) > 0))

    def cut_limit(self, ranked: np.ndarray, is_open: np.ndarray, allowed: int) -> int:
        """The largest cut k (first k of `ranked` inside) the constraints allow."""
        open_positions = np.flatnonzero(is_open)
        unit = self._unit[ranked[open_positions]]
        if (unit < 0).any():
            raise ValueError("an open sample outside this round's candidates reached the guide")
        # A unit starts to count at its crossing member: the one that makes half of it eval.
        needed = (self._size[unit] + 1) // 2 - self._inside[unit]
        crossing = ~self._counted[unit] & (_occurrence(unit) == needed)
        events = np.flatnonzero(crossing)
        event_units = unit[events]
        over = np.flatnonzero(np.cumsum(self._size[event_units]) > allowed)
        first = int(over[0]) if len(over) else len(events)
        if self.caps and self._labels is not None and len(events):
            first = min(first, self._first_over_cap(event_units))
        limit = len(ranked) if first >= len(events) else int(open_positions[events[first]])
        if self.whole_groups and self._grouped:
            limit = _winnable_limit(unit, open_positions, crossing, ~self._counted[unit], limit)
        return limit

    def accepted(self, members: np.ndarray) -> int:
        """Records a bubble's captured samples; returns how many eval samples it is worth."""
        unit = self._unit[members]
        touched = np.unique(unit)
        np.add.at(self._inside, unit, 1)
        now = touched[~self._counted[touched] & (2 * self._inside[touched] >= self._size[touched])]
        self._counted[now] = True
        if self._labels is not None and len(now):
            self._eval += np.asarray(self._unit_labels[now].sum(axis=0)).reshape(-1)
        return int(self._size[now].sum())

    # -- labels ---------------------------------------------------------------------------

    def deficit(self, labels: np.ndarray | int) -> np.ndarray:
        """Eval samples a label still needs to reach its target (<= 0: reached)."""
        return self._target[labels] - self._eval[labels]

    def _first_over_cap(self, event_units: np.ndarray) -> int:
        """Index of the first event after which some pursued label is over its cap."""
        # The events' rows of the unit x label matrix, gathered by hand: scipy's row
        # indexing costs more than the rest of a candidate's check.
        matrix = self._unit_labels
        begin = matrix.indptr[event_units]
        lengths = matrix.indptr[event_units + 1] - begin
        if lengths.sum() == 0:
            return len(event_units)
        offsets = np.cumsum(lengths) - lengths
        entries = np.arange(lengths.sum()) - np.repeat(offsets - begin, lengths)
        rows = np.repeat(np.arange(len(event_units)), lengths)
        order = np.lexsort((rows, matrix.indices[entries]))
        rows, entries = rows[order], entries[order]
        cols, added = matrix.indices[entries], matrix.data[entries]
        running = np.cumsum(added)
        starts = np.r_[0, np.flatnonzero(np.diff(cols)) + 1]
        lengths = np.diff(np.r_[starts, len(cols)])
        running -= np.repeat(running[starts] - added[starts], lengths)
        room = self._cap[cols] - self._eval[cols]
        over = self.pursued[cols] & (running > room)
        return int(rows[over].min()) if over.any() else len(event_units)


def _winnable_limit(
    unit: np.ndarray,
    positions: np.ndarray,
    crossing: np.ndarray,
    open_unit: np.ndarray,
    limit: int,
) -> int:
    """Lowers `limit` until no cut below it takes members of a group it cannot win.

    Entries are a candidate's open samples in rank order: their unit, position in the
    ranking, whether the entry is its unit's crossing member, and whether the unit still
    needs one. A cut k takes the entries at positions < k; a unit whose first entry is
    taken but whose crossing entry is not (or does not exist) would be a captured
    minority, moved back to train by the group vote. Lowering the limit to that first
    entry can strand other units, so it repeats until none is left.
    """
    if not open_unit.any():
        return limit
    units, first = np.unique(unit, return_index=True)
    cross = np.full(len(units), np.iinfo(np.int64).max)
    at = np.flatnonzero(crossing)
    cross[np.searchsorted(units, unit[at])] = positions[at]
    still_open = open_unit[first]
    first_position = positions[first]
    while True:
        stranded = still_open & (first_position < limit) & (cross >= limit)
        if not stranded.any():
            return limit
        limit = int(first_position[stranded].min())


def _occurrence(unit: np.ndarray) -> np.ndarray:
    """1-based rank of each entry among the entries of the same unit, in order."""
    order = np.argsort(unit, kind="stable")
    sorted_units = unit[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_units)) + 1]
    lengths = np.diff(np.r_[starts, len(unit)])
    rank = np.arange(len(unit)) - np.repeat(starts, lengths) + 1
    out = np.empty(len(unit), dtype=np.int64)
    out[order] = rank
    return out


class LabelFirstStream:
    """Candidate centres among the open samples of labels short of their target.

    Labels come rarest first; a label's candidates are drawn by its own `CandidateStream`
    (the configured method, on that label's open samples), until the label reaches its
    target or its candidates run out. `rows(positions)` is the identity: positions are rows.
    """

    def __init__(
        self,
        guide: CaptureGuide,
        label_rows: Callable[[int], np.ndarray],
        make_stream: Callable[[np.ndarray, int], CandidateStream],
        bubble_size: int,
    ) -> None:
        self._guide = guide
        self._label_rows = label_rows
        self._make_stream = make_stream
        self._bubble_size = max(bubble_size, 1)
        self.restart()

    def restart(self) -> None:
        """Start again from the rarest label still short of its target."""
        guide = self._guide
        short = np.flatnonzero(guide.pursued & (guide.deficit(np.arange(len(guide.pursued))) > 0))
        self._order = short[np.lexsort((short, guide.label_counts[short]))].tolist()
        self._stream: CandidateStream | None = None

    def rows(self, positions: np.ndarray) -> np.ndarray:
        return positions

    def next_batch(self, n: int) -> np.ndarray:
        while self._order:
            label = self._order[0]
            deficit = int(self._guide.deficit(label))
            if deficit > 0 and self._stream is None:
                rows = self._label_rows(label)
                if len(rows):
                    expected = max(1, deficit // self._bubble_size)
                    self._stream = self._make_stream(rows, expected)
            if deficit > 0 and self._stream is not None:
                # Few candidates at a time: a small label is done after a bubble or two.
                # Powers of two keep the Sobol draws balanced.
                wanted = min(n, 1 << int(np.ceil(np.log2(max(2, 2 * deficit / self._bubble_size)))))
                batch = self._stream.next_batch(wanted)
                if len(batch):
                    return self._stream.rows(batch)
            self._order.pop(0)
            self._stream = None
        return np.empty(0, dtype=np.int64)


@dataclass
class RoundConstraints:
    """The label and group hooks of one `BubbleFence.ingest` round (see the module doc)."""

    config: BubbleFenceConfig
    guide: CaptureGuide
    codes: np.ndarray | None
    labels: LabelIndex | None
    old_rows: np.ndarray
    new_rows: np.ndarray
    stats: dict[str, int] = field(default_factory=dict)

    @classmethod
    def start(
        cls,
        config: BubbleFenceConfig,
        split: np.ndarray,
        anchor: np.ndarray,
        shell: np.ndarray,
        kept: np.ndarray,
        new_rows: np.ndarray,
        anchors: AnchorTable,
        *,
        labels: np.ndarray | None,
        groups: np.ndarray | None,
    ) -> RoundConstraints | None:
        """Constraints of a round whose new samples came with labels and/or groups, else None.

        `labels` / `groups` are per row of the whole state (earlier rows first); new rows
        of known groups take their group's side here, in place.
        """
        use_labels = labels is not None and config.label_aware
        if not use_labels and groups is None:
            return None
        old_rows = np.setdiff1d(np.arange(len(split)), new_rows)
        candidates = new_rows[kept[new_rows]]
        codes = None
        stats = {}
        if groups is not None:
            codes = group_codes(groups)
            known = follow_known_groups(
                codes,
                candidates,
                old_rows,
                split,
                anchor,
                shell,
                anchors.layout,
                config.validation_ratio,
            )
            stats["group_known"] = int(known.sum())
            candidates = candidates[~known]
        index = LabelIndex.from_encoded(labels) if use_labels else None
        guide = CaptureGuide(split, kept, candidates, codes, index, config)
        return cls(config, guide, codes, index, old_rows, new_rows, stats)

    @property
    def eval_correction(self) -> int:
        """Eval samples the group votes will add (or remove) on top of the current count."""
        return self.guide.eval_correction

    def grow(
        self,
        embeddings: np.ndarray,
        split: np.ndarray,
        kept: np.ndarray,
        stream_factory: Callable[[int], Any],
        anchors: AnchorTable,
        budget: Budget,
        config: BubbleFenceConfig,
        rng: np.random.Generator,
        round_index: int,
        *,
        pool: np.ndarray,
        reference: np.ndarray,
    ) -> GrowResult:
        """`quota.grow_bubbles` in the phases of the module doc; same arguments and result."""
        n = len(embeddings)
        grown_anchor = np.full(n, -1, dtype=np.int64)
        grown_shell = np.zeros(n, dtype=np.int8)
        table = AnchorTable(centres=np.empty((0, embeddings.shape[1]), np.float32))
        totals = {"captured": 0, "new_anchors": 0, "cut_pairs": 0}

        def label_stream_factory(size: int) -> LabelFirstStream:
            by_label = self.labels.matrix[pool].tocsc()
            # One PCA basis for every label's stream: a fit per label costs a d x d
            # eigendecomposition each (0.2 s at d = 512), and the pool's axes serve well.
            projection = fit_projection(embeddings[pool], config.pca_dims, rng)

            def label_rows(label: int) -> np.ndarray:
                rows = pool[by_label.indices[by_label.indptr[label] : by_label.indptr[label + 1]]]
                return np.sort(rows[split[rows] == UNASSIGNED])

            def make_stream(rows: np.ndarray, expected: int) -> CandidateStream:
                return CandidateStream(
                    embeddings, rows, projection, reference, config, rng, expected
                )

            return LabelFirstStream(self.guide, label_rows, make_stream, size)

        # (name, candidate stream, label cap level or None). Every phase but the last takes
        # clean cuts only and never cuts into a group it cannot win; "fill" is the resort
        # that makes the quota whatever the labels and groups ask.
        phases: list[tuple[str, Callable[[int], Any], float | None]] = []
        if self.labels is not None:
            phases.append(("labels", label_stream_factory, LABEL_PHASE_LEVEL))
            phases += [("capped", stream_factory, level) for level in CAP_LEVELS]
        elif self.codes is not None:
            phases.append(("whole_groups", stream_factory, None))
        phases.append(("fill", stream_factory, None))
        for name, factory, cap_level in phases:
            captured = totals["captured"]
            need = budget.cap - captured if name == "labels" else budget.need - captured
            if name == "fill" and len(phases) > 1:
                # What the careful phases left costs label balance or group members moved
                # back to train: the fill only keeps the share within half the tolerance.
                need -= (budget.cap - budget.need) // 2
            if need <= 0:
                continue
            self.guide.label_phase = name == "labels"
            self.guide.strict_only = self.guide.whole_groups = name != "fill"
            self.guide.caps = cap_level is not None
            if cap_level is not None:
                self.guide.set_cap_level(cap_level)
            phase_table, phase_anchor, phase_shell, phase_stats = grow_bubbles(
                embeddings,
                split,
                kept,
                factory,
                anchors.append(table),
                Budget(need=need, cap=budget.cap - captured),
                config,
                rng,
                round_index,
                guide=self.guide,
            )
            grown = phase_anchor >= 0
            # Phase anchors are numbered after `anchors.append(table)`, as they will be stored.
            grown_anchor[grown] = phase_anchor[grown]
            grown_shell[grown] = phase_shell[grown]
            table = table.append(phase_table)
            for key in totals:
                totals[key] += int(phase_stats[key])
            key = f"captured_{name}"
            self.stats[key] = self.stats.get(key, 0) + int(phase_stats["captured"])
        if self.labels is not None and config.shell_layout == "random":
            self.stats["layouts_turned"] = self._turn_layouts(
                table, len(anchors), split, kept, grown_anchor, grown_shell, config
            )
        stats = {
            "need": budget.need,
            **totals,
            "shortfall": max(budget.need - totals["captured"], 0),
        }
        return table, grown_anchor, grown_shell, stats

    def _turn_layouts(
        self,
        table: AnchorTable,
        first_index: int,
        split: np.ndarray,
        kept: np.ndarray,
        grown_anchor: np.ndarray,
        grown_shell: np.ndarray,
        config: BubbleFenceConfig,
    ) -> int:
        """Turns new bubbles (inner_val <-> inner_test) so labels get validation and test.

        With `shell_layout="random"` a new bubble's layout is a coin; here a bubble is
        turned instead where that gives a pursued label its first validation or test
        sample without taking one away elsewhere, and keeps val/(val+test) within
        `BALANCE_SLACK` of `validation_ratio` (or no further off than it was). Turning a
        bubble swaps the split of its two shells: every bubble invariant still holds.
        Returns how many bubbles were turned (in place: `table.layout`, `split`).
        """
        members = np.flatnonzero(grown_anchor >= first_index)
        if len(members) == 0:
            return 0
        index = self.labels
        bubble = grown_anchor[members] - first_index
        is_inner = grown_shell[members] == INNER
        per_shell = [
            sparse.csr_matrix(
                (np.ones(int(np.sum(mask)), np.int64), (bubble[mask], np.flatnonzero(mask))),
                shape=(len(table), len(members)),
            )
            @ index.matrix[members]
            for mask in (is_inner, ~is_inner)
        ]
        inner, outer = (m.toarray() for m in per_shell)
        val = index.counts(kept & (split == VALIDATION))
        test = index.counts(kept & (split == TEST))
        n_val, n_test = int(np.sum(split == VALIDATION)), int(np.sum(split == TEST))
        pursued = self.guide.pursued
        turned = 0
        missing = np.flatnonzero(pursued & ((val == 0) ^ (test == 0)))
        for label in missing[np.argsort(self.guide.label_counts[missing], kind="stable")]:
            if val[label] > 0 and test[label] > 0:
                continue  # a turn made for a rarer label covered this one too
            holders = np.flatnonzero(inner[:, label] + outer[:, label])
            for b in holders[np.argsort(-(inner[holders, label] + outer[holders, label]))]:
                to_val = inner[b] if table.layout[b] == INNER_VAL else outer[b]
                to_test = outer[b] if table.layout[b] == INNER_VAL else inner[b]
                new_val, new_test = val - to_val + to_test, test - to_test + to_val
                gain = _covered(new_val, new_test, pursued) - _covered(val, test, pursued)
                moved = int(to_test.sum() - to_val.sum())
                before = _balance_error(n_val, n_test, config.validation_ratio)
                after = _balance_error(n_val + moved, n_test - moved, config.validation_ratio)
                if gain > 0 and after <= max(BALANCE_SLACK, before):
                    rows = members[bubble == b]
                    split[rows] = VALIDATION + TEST - split[rows]
                    table.layout[b] = INNER_VAL + INNER_TEST - table.layout[b]
                    val, test = new_val, new_test
                    n_val, n_test = n_val + moved, n_test - moved
                    turned += 1
                    break
        return turned

    def finish(
        self,
        split: np.ndarray,
        anchor: np.ndarray,
        shell: np.ndarray,
        duplicate_of: np.ndarray,
        layout: np.ndarray,
    ) -> dict[str, int]:
        """Resolves the groups (in place) once every new row has a split; returns round stats."""
        if self.codes is not None:
            follower = (duplicate_of[self.new_rows] >= 0) & (split[self.new_rows] != DUPLICATE)
            moves = resolve_round(
                self.codes,
                self.old_rows,
                self.new_rows,
                follower,
                split,
                anchor,
                shell,
                layout,
                self.config.validation_ratio,
            )
            self.stats.update({f"group_{k}": v for k, v in moves.items()})
        return dict(self.stats)


def _covered(val: np.ndarray, test: np.ndarray, pursued: np.ndarray) -> int:
    """Pursued labels present in validation, plus those present in test."""
    return int(np.sum(pursued & (val > 0)) + np.sum(pursued & (test > 0)))


def _balance_error(n_val: int, n_test: int, validation_ratio: float) -> float:
    return abs(n_val / max(n_val + n_test, 1) - validation_ratio)
