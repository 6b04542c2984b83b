"""The state file (core/state.py): atomic npz round trips, and the checks that refuse a
damaged or crafted state with one StateDamagedError before anything is allocated."""

import io
import json
import zipfile

import numpy as np
import pytest

from bubblefence_plugin.core.state import (
    FORMAT_VERSION,
    MAX_DIM,
    MAX_STRING_CHARS,
    StateDamagedError,
    array_from_npy_bytes,
    check_layout,
    check_model_name,
    check_values,
    claim_buffer,
    npy_blob_header,
    read_state,
    rows_with_room,
    write_state,
)

WHERE, REMEDY = "test state", "reset it"


def small_state():
    """A valid state of 3 samples and one bubble, 2-d embeddings."""
    meta = {"config": {"model_name": "org/model"}, "history": [{"n_new": 3}], "dim": 2}
    arrays = {
        "ids": np.array(["a", "b", "c"]),
        "embeddings": np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]], np.float32),
        "split": np.array([0, 1, 2], np.int8),
        "anchor": np.array([-1, 0, 0], np.int64),
        "duplicate_of": np.array([-1, -1, 1], np.int64),
        "region": np.array([0, 0, -1], np.int64),
        "region_centres": np.array([[1.0, 0.0]], np.float32),
        "anchor_radius": np.array([0.1]),
        "anchor_centre_row": np.array([1], np.int64),
        "anchor_centres": np.array([[0.0, 1.0]], np.float32),
    }
    return meta, arrays


def headers(arrays):
    return {name: (a.shape, a.dtype) for name, a in arrays.items()}


def raw_npz(path, meta, arrays):
    """Written without write_state: whatever a crafted file holds."""
    blob = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    np.savez(path, meta_json=blob, **arrays)


# --------------------------------------------------------------------------- round trip


def test_state_round_trips_arrays_dtypes_and_meta(tmp_path):
    meta, arrays = small_state()
    path = tmp_path / "deep" / "state.npz"  # folders are created
    write_state(path, meta, arrays)
    got_meta, got = read_state(path)
    assert got_meta == {**meta, "n_samples": 3, "format_version": FORMAT_VERSION}
    assert set(got) == set(arrays)
    for name, value in arrays.items():
        assert got[name].dtype == value.dtype and np.array_equal(got[name], value)
    # Nothing but the state is left in the folder: the temporary file was renamed.
    assert [p.name for p in path.parent.iterdir()] == ["state.npz"]


def test_writing_again_replaces_the_state(tmp_path):
    meta, arrays = small_state()
    path = tmp_path / "state.npz"
    write_state(path, meta, arrays)
    arrays["split"] = np.array([2, 2, 2], np.int8)
    write_state(path, {**meta, "history": [{"n_new": 3}, {"n_new": 0}]}, arrays)
    got_meta, got = read_state(path)
    assert got["split"].tolist() == [2, 2, 2] and len(got_meta["history"]) == 2
    assert [p.name for p in tmp_path.iterdir()] == ["state.npz"]


def test_object_arrays_are_refused_before_anything_is_written(tmp_path):
    meta, arrays = small_state()
    arrays["labels"] = np.array(["x", None, "y"], dtype=object)
    with pytest.raises(ValueError, match="'labels' has dtype object"):
        write_state(tmp_path / "state.npz", meta, arrays)
    assert list(tmp_path.iterdir()) == []


def test_an_empty_state_round_trips(tmp_path):
    meta = {"config": {}, "history": [], "dim": None}
    arrays = {"ids": np.empty(0, np.int64), "embeddings": np.empty((0, 0), np.float32)}
    write_state(tmp_path / "s.npz", meta, arrays)
    got_meta, got = read_state(tmp_path / "s.npz")
    assert got_meta["n_samples"] == 0 and got["embeddings"].shape == (0, 0)


@pytest.mark.parametrize(
    "layout",
    [
        lambda e: e.astype(np.float64),
        np.asfortranarray,
        lambda e: e.astype(">f4"),
    ],
    ids=["float64", "fortran_order", "big_endian"],
)
def test_embeddings_stored_in_another_layout_read_as_the_same_float32_rows(tmp_path, layout):
    meta, arrays = small_state()
    raw_npz(
        tmp_path / "s.npz",
        {**meta, "n_samples": 3, "format_version": FORMAT_VERSION},
        {**arrays, "embeddings": layout(arrays["embeddings"])},
    )
    got = read_state(tmp_path / "s.npz")[1]["embeddings"]
    assert got.dtype == np.float32 and got.flags.c_contiguous
    np.testing.assert_array_equal(got, arrays["embeddings"])


def test_read_rows_have_room_after_them_for_one_owner():
    rows = rows_with_room(3, 2)
    buffer = claim_buffer(rows)
    assert buffer is not None and len(buffer) > 3 and buffer.ctypes.data == rows.ctypes.data
    assert claim_buffer(rows) is None  # a second state would write into the first's rows
    other = rows_with_room(4, 2)
    assert claim_buffer(other[:2]) is None  # rows 2-3 belong to whoever holds `other`
    assert claim_buffer(np.zeros((8, 2), np.float32)[:4]) is None  # not a reader's rows


# --------------------------------------------------------------------------- damaged files


def test_a_missing_file_is_not_called_damaged(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_state(tmp_path / "nothing.npz")


@pytest.mark.parametrize(
    ("damage", "match"),
    [
        ("garbage", "not a readable npz"),
        ("truncated", "not a readable npz"),
        ("flipped_byte", "not a readable npz"),
        ("no_meta", "no meta_json member"),
        ("no_ids", "no ids array"),
        ("foreign_member", "unexpected member 'notes.txt'"),
        ("short_member", "header says"),
        ("short_split", "'split' has 2 rows for 3 samples"),
        ("bad_json", "JSON header does not parse"),
        ("json_list", "not an object"),
        ("no_config", "no config"),
        ("history", "round history"),
        ("pointer", "'anchor' points at bubbles -1..1 of 1"),
        ("flat_embeddings", r"embeddings of shape \(3,\)"),
    ],
)
def test_damaged_state_files_raise_one_state_damaged_error(tmp_path, damage, match):
    meta, arrays = small_state()
    path = tmp_path / "state.npz"
    write_state(path, meta, arrays)
    data = path.read_bytes()
    full = {**meta, "n_samples": 3, "format_version": FORMAT_VERSION}
    if damage == "garbage":
        path.write_bytes(b"this is not a zip file at all")
    elif damage == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "flipped_byte":
        # The last byte of the split member (stored uncompressed): its CRC check fails.
        with zipfile.ZipFile(path) as archive:
            info = archive.getinfo("split.npy")
        start = info.header_offset
        names = int.from_bytes(data[start + 26 : start + 28], "little")
        extra = int.from_bytes(data[start + 28 : start + 30], "little")
        offset = start + 30 + names + extra + info.compress_size - 1
        assert data[offset] == 2  # split is [0, 1, 2]
        path.write_bytes(data[:offset] + b"\x07" + data[offset + 1 :])
    elif damage == "no_meta":
        np.savez(path, **arrays)
    elif damage == "no_ids":
        raw_npz(path, full, {k: v for k, v in arrays.items() if k != "ids"})
    elif damage == "foreign_member":
        with zipfile.ZipFile(path, "a") as archive:
            archive.writestr("notes.txt", b"hello")
    elif damage == "short_member":
        with zipfile.ZipFile(path, "a") as archive:
            buf = io.BytesIO()
            np.save(buf, np.arange(4, dtype=np.int64))
            archive.writestr("extra.npy", buf.getvalue()[:-8])
    elif damage == "short_split":
        raw_npz(path, full, {**arrays, "split": arrays["split"][:2]})
    elif damage == "bad_json":
        np.savez(path, meta_json=np.frombuffer(b"{not json", np.uint8), **arrays)
    elif damage == "json_list":
        np.savez(path, meta_json=np.frombuffer(b"[1, 2]", np.uint8), **arrays)
    elif damage == "no_config":
        raw_npz(path, {k: v for k, v in full.items() if k != "config"}, arrays)
    elif damage == "history":
        raw_npz(path, {**full, "history": {"n_new": 3}}, arrays)
    elif damage == "pointer":
        raw_npz(path, full, {**arrays, "anchor": np.array([-1, 0, 1], np.int64)})
    elif damage == "flat_embeddings":
        raw_npz(path, full, {**arrays, "embeddings": arrays["embeddings"][:, 0].copy()})
    with pytest.raises(StateDamagedError, match=match) as info:
        read_state(path)
    message = str(info.value)
    assert "reset" in message and "\n" not in message and str(path) in message


def test_another_format_version_is_refused_with_its_own_message(tmp_path):
    meta, arrays = small_state()
    raw_npz(tmp_path / "s.npz", {**meta, "format_version": FORMAT_VERSION + 1}, arrays)
    with pytest.raises(ValueError, match="format version 2 is not supported"):
        read_state(tmp_path / "s.npz")


# --------------------------------------------------------------------------- the layout


def test_the_valid_layout_passes():
    meta, arrays = small_state()
    check_layout(headers(arrays), meta, 3, WHERE, REMEDY)
    check_values(arrays, WHERE, REMEDY)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda h, m: h.pop("ids"), "no ids array"),
        (lambda h, m: m.update(dim=0), "embedding dimension 0"),
        (lambda h, m: m.update(dim=MAX_DIM + 1), "embedding dimension"),
        (lambda h, m: m.update(history=[1]), "round history"),
        (lambda h, m: m["config"].update(model_name="bad name"), "model name"),
        (lambda h, m: h.update(split=((3, 1, 1), np.dtype(np.int8))), "has shape"),
        (lambda h, m: h.update(split=((), np.dtype(np.int8))), "has shape"),
        (lambda h, m: h.update(region=((4,), np.dtype(np.int64))), "'region' has 4 rows"),
        (lambda h, m: h.update(embeddings=((3, 3), np.dtype(np.float32))), "expected \\(3, 2\\)"),
        (lambda h, m: h.update(embeddings=((3, 2), np.dtype(np.int32))), "floats"),
        (lambda h, m: h.update(anchor_radius=((2,), np.dtype(np.float64))), "disagree"),
        (lambda h, m: h.update(notes=((9,), np.dtype(np.int8))), "'notes' has 9 rows"),
        (
            lambda h, m: h.update(ids=((3,), np.dtype(f"<U{MAX_STRING_CHARS + 1}"))),
            "strings of 4097",
        ),
        (lambda h, m: h.update(split=((3,), np.dtype(np.complex128))), "has dtype"),
        # Ids or codes as floats (a tester's ids loaded, then failed the next round).
        (lambda h, m: h.update(ids=((3,), np.dtype(np.float64))), "'ids' has dtype float64"),
        (lambda h, m: h.update(split=((3,), np.dtype(np.float32))), "'split' has dtype"),
    ],
)
def test_layout_check_refuses(change, match):
    meta, arrays = small_state()
    h = headers(arrays)
    meta = json.loads(json.dumps(meta))
    change(h, meta)
    with pytest.raises(StateDamagedError, match=match):
        check_layout(h, meta, 3, WHERE, REMEDY)


@pytest.mark.parametrize("n_samples", [-1, "3", 3.0, None, True])
def test_layout_check_refuses_a_sample_count_that_is_not_a_count(n_samples):
    meta, arrays = small_state()
    with pytest.raises(StateDamagedError, match="sample count"):
        check_layout(headers(arrays), meta, n_samples, WHERE, REMEDY)


def test_bubble_columns_are_bounded_by_the_samples_ever_ingested():
    # Samples forgotten since: 3 now, 5 ingested in all, so up to 5 bubbles.
    meta, arrays = small_state()
    h = headers(arrays)
    for name in ("anchor_radius", "anchor_centre_row"):
        h[name] = ((5,), h[name][1])
    h["anchor_centres"] = ((5, 2), np.dtype(np.float32))
    meta["history"] = [{"n_new": 3}, {"n_new": 2}]
    check_layout(h, meta, 3, WHERE, REMEDY)
    meta["history"] = [{"n_new": 3}, {"n_new": True}]  # not a count: not counted
    with pytest.raises(StateDamagedError, match="has 5 rows; the state holds 3"):
        check_layout(h, meta, 3, WHERE, REMEDY)


def test_without_a_dimension_no_2d_array_has_width():
    meta = {"config": {}, "history": []}
    h = {"ids": ((0,), np.dtype(np.int64)), "embeddings": ((0, 0), np.dtype(np.float32))}
    check_layout(h, meta, 0, WHERE, REMEDY)
    h["embeddings"] = ((0, 4), np.dtype(np.float32))
    with pytest.raises(StateDamagedError, match="expected \\(0, 0\\)"):
        check_layout(h, meta, 0, WHERE, REMEDY)


@pytest.mark.parametrize(
    ("name", "value", "match"),
    [
        ("duplicate_of", [-1, -1, 3], "'duplicate_of' points at samples -1..3 of 3"),
        ("duplicate_of", [-2, -1, 0], "points at samples -2..0"),
        ("anchor_centre_row", [3], "'anchor_centre_row' points at samples"),
        ("region", [0, 1, -1], "'region' points at regions -1..1 of 1"),
        ("anchor", [-1.0, 0.0, 0.0], "'anchor' has dtype float64, not integers"),
    ],
)
def test_pointer_columns_must_point_inside_their_table(name, value, match):
    _, arrays = small_state()
    arrays[name] = np.array(value)
    with pytest.raises(StateDamagedError, match=match):
        check_values(arrays, WHERE, REMEDY)


def test_a_state_without_regions_may_not_point_at_one():
    _, arrays = small_state()
    del arrays["region_centres"]
    arrays["region"] = np.array([-1, -1, -1])
    check_values(arrays, WHERE, REMEDY)
    arrays["region"] = np.array([-1, 0, -1])
    with pytest.raises(StateDamagedError, match="of 0"):
        check_values(arrays, WHERE, REMEDY)


# --------------------------------------------------------------------------- names, npy bytes


@pytest.mark.parametrize(
    "name", [None, "openai/clip-vit-base-patch32", "model", "/models/clip", "./clip", "~/m"]
)
def test_model_names_that_are_hub_ids_or_paths_pass(name):
    check_model_name(name, WHERE, REMEDY)


@pytest.mark.parametrize("name", ["", "a b", "org/model\x1b[2J", "x\n; rm -rf ~", "a" * 5000, 42])
def test_other_model_names_are_refused(name):
    with pytest.raises(StateDamagedError, match="model name"):
        check_model_name(name, WHERE, REMEDY)


def _npy(array):
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def test_npy_bytes_round_trip_after_their_header_is_checked():
    value = np.arange(6, dtype=np.int16).reshape(2, 3)
    blob = _npy(value)
    assert npy_blob_header(blob, WHERE, REMEDY) == ((2, 3), np.dtype(np.int16))
    assert np.array_equal(array_from_npy_bytes(blob, WHERE, REMEDY), value)
    assert array_from_npy_bytes(memoryview(blob), WHERE, REMEDY).tolist() == value.tolist()


@pytest.mark.parametrize(
    ("blob", "match"),
    [
        (_npy(np.arange(4))[:-1], "header says 32"),
        (_npy(np.arange(4)) + b"\x00", "header says 32"),
        ("text", "a str, not npy bytes"),
        (b"\x93NUMPY garbage", "not an npy array"),
        (_npy(np.zeros(2, dtype=[("a", "<i4"), ("b", "<f4")])), "a state holds numbers"),
    ],
)
def test_npy_bytes_that_do_not_match_their_header_are_refused(blob, match):
    with pytest.raises(StateDamagedError, match=match):
        array_from_npy_bytes(blob, WHERE, REMEDY)
