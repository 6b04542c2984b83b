"""The texts users read after a run: one summary, rendered as Markdown or plain text."""

from bubblefence_plugin.text import (
    TOAST_CHARS,
    Line,
    SummaryText,
    audited_text,
    round_text,
    round_warnings,
    toast,
)

SUMMARY = {
    "message": "Round 1: 40 samples assigned",
    "counts_round": {"train": 30, "validation": 5, "test": 5},
    "eval_share": 0.25,
    "n_embedded": 0,
    "n_errors": 2,
    "errors": {"/data/a.png": "cannot identify image file"},
    "labels": {"missing_from_eval": ["owl", "fox"]},
    "groups": {"n_groups": 9, "violations": 1},
}


def test_round_warnings_name_the_labels_and_count_the_groups():
    warnings = round_warnings(SUMMARY)
    assert len(warnings) == 3
    assert "2 labels: owl, fox" in warnings[0]
    one = round_warnings({"labels": {"missing_from_train": ["owl"]}})
    assert one[0].startswith("No train sample for 1 label: owl")
    assert warnings[1].startswith("2 samples have no usable embedding and are in no split")
    assert warnings[2].startswith("1 of 9 groups have samples on both sides")
    assert round_warnings({"labels": {"missing_from_eval": []}, "groups": {"violations": 0}}) == []
    # A group field with no value on any sample split so far: said (found by a stress
    # test: the right field on the wrong view split ungrouped, silently).
    (empty,) = round_warnings({"group_field": "drive", "groups": {"n_groups": 0}})
    assert empty.startswith("The group field 'drive' has no value on any sample split so far")


def test_labels_far_off_their_share_are_named_with_the_target():
    labels = {"off_share": {f"c{i}": [0.03, 194 + i] for i in range(6)}, "n_off_share": 7}
    (warning,) = round_warnings({"labels": labels, "targets": None})
    assert warning.startswith(
        "Eval holds a share far from target for 7 labels of 100 samples or more: "
        "c0 0.03 of 194, c1 0.03 of 195, c2 0.03 of 196, c3 0.03 of 197, c4 0.03 of 198, ..."
    )


def test_round_text_names_failed_files_and_leaves_out_zero_counts():
    plain = round_text({**SUMMARY, "labels": None, "groups": None}).plain()
    assert plain.splitlines()[0] == "Round 1: 40 samples assigned"
    assert "/data/a.png" in plain and "cannot identify image file" in plain
    assert "Images embedded" not in plain  # zero: nothing to say
    assert "validation share of eval" not in plain  # not in this summary
    with_share = round_text({**SUMMARY, "labels": None, "validation_share_of_eval": 0.5}).plain()
    assert "validation share of eval: 0.5" in with_share
    assert "samples with errors: 2" in plain
    # One failed file shown of two: the other is counted, not lost.
    assert "and 1 more: each failed sample's error field says why" in plain


def test_cut_pairs_and_a_yielded_floor_are_said_only_when_they_happened():
    summary = {**SUMMARY, "labels": None, "groups": None, "n_errors": 0}
    quiet = {**summary, "cut_pairs": 0, "eval_floor_shortfall": 0}
    assert round_warnings(quiet) == []
    assert "near-twin" not in round_text(quiet).plain().lower()
    cut = {**summary, "cut_pairs": 7, "eval_floor_shortfall": 3}
    (warning,) = round_warnings(cut)
    assert warning.startswith("7 near-twin pairs cross the train/eval or validation/test")
    plain = round_text(cut).plain()
    assert "near-twin pairs cut: 7" in plain
    assert "eval samples short of min_eval_per_batch: 3" in plain


def test_shares_off_target_are_warned_with_their_figures():
    targets = {"eval_ratio": 0.2, "eval_tolerance": 0.03, "validation_ratio": 0.5}
    on = {"eval_share": 0.229, "validation_share_of_eval": 0.529, "n_eval": 359}
    assert round_warnings({**on, "targets": targets}) == []
    off = {"eval_share": 0.258, "validation_share_of_eval": 0.765, "n_eval": 464}
    eval_warning, validation_warning = round_warnings({**off, "targets": targets})
    assert eval_warning.startswith("Eval is 0.258 of the kept samples against a target of 0.2")
    assert "those inside an earlier bubble join it" in eval_warning  # the other cause
    assert validation_warning.startswith("Validation is 0.765 of eval against a target of 0.5")
    # Below 200 eval samples whole components may not allow 0.03: no validation warning.
    small = {**off, "eval_share": 0.2, "n_eval": 199, "targets": targets}
    assert round_warnings(small) == []
    assert round_warnings(off) == []  # a summary without targets (older callers)


def test_a_split_left_without_train_validation_or_test_is_warned():
    """Found by a tester: eval_ratio 0.99 put every sample in eval (within the share's
    tolerance) and the round was a green success; the audit warned of it."""
    targets = {"eval_ratio": 0.99, "eval_tolerance": 0.03, "validation_ratio": 0.5}
    summary = {"eval_share": 1.0, "validation_share_of_eval": 0.5, "n_eval": 108}
    counts = {"train": 0, "validation": 54, "test": 54, "duplicate": 12}
    for key in ("counts", "counts_total"):  # the core's summary, the FiftyOne side's
        (warning,) = round_warnings({**summary, "targets": targets, key: counts})
        assert warning == (
            "No train sample in the split (eval_ratio 0.99, validation_ratio 0.5, 108 samples kept)"
        )
    # No test sample where validation_ratio asks for none: as asked, not warned.
    all_validation = {**targets, "eval_ratio": 0.2, "validation_ratio": 1.0}
    counts = {"train": 400, "validation": 100, "test": 0}
    summary = {"eval_share": 0.2, "validation_share_of_eval": 1.0, "n_eval": 100}
    assert round_warnings({**summary, "targets": all_validation, "counts": counts}) == []
    (warning,) = round_warnings(
        {**summary, "targets": {**all_validation, "validation_ratio": 0.9}, "counts": counts}
    )
    assert warning.startswith("No test sample in the split")


def test_an_eval_share_off_target_names_the_causes_that_apply():
    """Round 0 has no earlier samples to blame; a quota it could not meet names its units
    (groups too, with a group field); a later round names what follows earlier samples."""
    targets = {"eval_ratio": 0.2, "eval_tolerance": 0.03, "validation_ratio": 0.5}
    first = {"eval_share": 0.0, "validation_share_of_eval": 0.5, "n_eval": 0, "targets": targets}
    first["round"] = 0
    (short,) = round_warnings({**first, "eval_shortfall": 109, "group_field": "drive"})
    assert "could not hold out 109 more samples without a leak" in short
    assert "groups ('drive')" in short and "earlier" not in short
    (whole,) = round_warnings({**first, "eval_share": 0.26, "n_eval": 26})
    assert "held out whole" in whole and "earlier" not in whole
    (later,) = round_warnings({**first, "round": 3, "eval_share": 0.26, "group_field": "g"})
    assert "members of a known group follow it" in later and "earlier bubble" in later


def test_bridges_of_later_rounds_are_warned_past_the_leak_target():
    quiet = {"bridge_leaks": 9, "n_eval": 2000}  # 0.0045 of eval: within the target
    assert round_warnings(quiet) == []
    (warning,) = round_warnings({"bridge_leaks": 40, "n_eval": 2000})
    assert warning.startswith("Later rounds' bridges have made up to 40 eval samples leak")
    assert "(0.020 of eval)" in warning and "closure_threshold 0.85" in warning
    assert round_warnings({"bridge_leaks": 3, "n_eval": 0}) == []  # nothing held out yet


def test_what_a_report_left_out_is_counted_whole():
    # 222 samples: 209 split and measured, 10 duplicates or not split, 3 unreadable files
    # (no embedding): the 3 were missing from the count.
    result = {"n_collection": 222, "n_audited": 219, "n_split": 209}
    assert audited_text(result) == (
        "209 split samples (10 duplicates or not split, 3 without a usable embedding, left out)"
    )
    assert audited_text({"n_collection": 9, "n_audited": 9, "n_split": 9}) == "9 split samples"
    # Values that name no split are counted apart, not as duplicates (a stress test).
    holdout = {**result, "n_other_values": 6}
    assert audited_text(holdout) == (
        "209 split samples (6 with values not read as a split, 4 duplicates or not split, "
        "3 without a usable embedding, left out)"
    )
    assert audited_text({"n_audited": 5}) == "5 split samples"  # a report stored before


def test_plain_text_lowers_a_label_but_not_a_name_with_capitals_inside():
    text = SummaryText("Done", [Line("This round", "1"), Line("BubbleFence embed shard 1/2", "2")])
    assert text.plain() == "Done\n  this round: 1\n  BubbleFence embed shard 1/2: 2"


def test_counts_agree_with_their_noun():
    from bubblefence_plugin.text import counted

    assert [counted(n, "sample") for n in (0, 1, 2)] == ["0 samples", "1 sample", "2 samples"]
    assert counted(1, "bubble", with_number=False) == "bubble"


def test_toasts_are_cut_at_a_word():
    """A tester's toasts ran to 290-700 characters; the dialog keeps the whole."""
    assert toast("Round 0: 40 samples assigned") == "Round 0: 40 samples assigned"
    long = "Model 'no-such-model' is not available offline: " + "it was looked for " * 20
    cut = toast(long)
    assert len(cut) <= TOAST_CHARS and cut.endswith(" was…") and long.startswith(cut[:-1])
