"""Embedding throughput: BubbleFence's ImageEmbedder vs a naive loop vs FiftyOne.

Writes N synthetic photo-like JPEGs to a temp folder, then embeds the same files with
the same model, in this one process:

  1. ``ImageEmbedder`` (threaded decoding overlapped with inference, JPEG draft);
  2. the same with ``jpeg_draft=False`` (full-size decode: shows what draft buys);
  3. a naive loop: open, process and infer one batch at a time, no workers;
  4. FiftyOne's ``compute_embeddings`` with the same transformers model, wrapped by
     ``fiftyone.utils.transformers.convert_transformers_model`` (skipped with the
     reason printed when it cannot run).

Prints images/s, seconds and peak RSS per method, the speed ratio vs naive and the
cosine agreement with the naive vectors, and appends a Markdown table to
bench/RESULTS.md.

    .venv/bin/python bench/bench_embed.py                        # tiny CLIP, 2000 images
    .venv/bin/python bench/bench_embed.py --vit-b32-random --n 500
    .venv/bin/python bench/bench_embed.py --model openai/clip-vit-base-patch32
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "bench" / "RESULTS.md"


# ------------------------------------------------------------------------ images


def _photo(seed: int, width: int, height: int) -> np.ndarray:
    """Smooth colour field + shapes + sensor-like noise: JPEG-decodes like a photo."""
    from PIL import Image, ImageDraw, ImageFilter

    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, size=(4, 5, 3), dtype=np.uint8)
    base = Image.fromarray(coarse).resize((width, height), Image.BICUBIC)
    draw = ImageDraw.Draw(base)
    for _ in range(rng.integers(4, 12)):
        x0, y0 = rng.integers(0, width), rng.integers(0, height)
        x1 = x0 + rng.integers(20, width // 2)
        y1 = y0 + rng.integers(20, height // 2)
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        kind = rng.integers(0, 3)
        if kind == 0:
            draw.ellipse((x0, y0, x1, y1), fill=colour)
        elif kind == 1:
            draw.rectangle((x0, y0, x1, y1), fill=colour)
        else:
            pts = [(int(rng.integers(0, width)), int(rng.integers(0, height))) for _ in range(5)]
            draw.polygon(pts, fill=colour)
    base = base.filter(ImageFilter.GaussianBlur(radius=1.2))
    arr = np.asarray(base, dtype=np.float32)
    arr += rng.normal(0.0, 6.0, size=arr.shape).astype(np.float32)
    return np.clip(arr, 0, 255).astype(np.uint8)


def _write_one(args: tuple[int, str, int, int]) -> str:
    from PIL import Image

    seed, folder, width, height = args
    path = os.path.join(folder, f"photo_{seed:06d}.jpg")
    Image.fromarray(_photo(seed, width, height)).save(path, "JPEG", quality=90)
    return path


def write_images(folder: Path, n: int, width: int, height: int) -> list[str]:
    jobs = [(i, str(folder), width, height) for i in range(n)]
    with ProcessPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        return list(pool.map(_write_one, jobs, chunksize=16))


# ------------------------------------------------------------------------ models


def _tiny_clip_config():
    from transformers import CLIPConfig

    return CLIPConfig(
        text_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            vocab_size=600,
            max_position_embeddings=77,
        ),
        vision_config=dict(
            image_size=32,
            patch_size=8,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
        ),
        projection_dim=16,
    )


def _byte_level_tokenizer(folder: Path):
    """A minimal CLIP tokenizer (single bytes, no merges) so AutoProcessor can load.

    FiftyOne loads the full CLIPProcessor, which needs a tokenizer; our embedder
    does not. The text tower is never run by any method here.
    """
    from transformers import CLIPTokenizer
    from transformers.models.clip.tokenization_clip import bytes_to_unicode

    chars = list(bytes_to_unicode().values())
    vocab_list = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    vocab = {tok: i for i, tok in enumerate(vocab_list)}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))


def build_random_clip(folder: Path, vit_b32: bool) -> str:
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    torch.manual_seed(0)
    config = CLIPConfig() if vit_b32 else _tiny_clip_config()
    model = CLIPModel(config)
    model.save_pretrained(folder)
    size = config.vision_config.image_size
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": size}, crop_size={"height": size, "width": size}
    )
    tokenizer = _byte_level_tokenizer(folder)
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)
    return str(folder)


# --------------------------------------------------------------------- measuring


class PeakRSS:
    """Samples RSS of this process plus its worker children (not the database)."""

    def __init__(self, interval: float = 0.01) -> None:
        import psutil

        self._proc = psutil.Process()
        self._interval = interval
        self._stop = threading.Event()
        self.peak = 0
        self.start_rss = self._rss()

    def _rss(self) -> int:
        total = self._proc.memory_info().rss
        for child in self._proc.children(recursive=True):
            try:
                if "mongod" in child.name():
                    continue
                total += child.memory_info().rss
            except Exception:
                pass
        return total

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss())
            self._stop.wait(self._interval)

    def __enter__(self) -> PeakRSS:
        self.peak = self.start_rss = self._rss()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())


@dataclass
class Row:
    method: str
    seconds: float | None = None
    n_ok: int = 0
    peak_mb: float | None = None
    delta_mb: float | None = None
    cos_min: float | None = None
    cos_mean: float | None = None
    note: str = ""
    vectors: np.ndarray | None = None

    @property
    def ips(self) -> float | None:
        return None if not self.seconds else self.n_ok / self.seconds


def measure(method: str, fn: Callable[[], np.ndarray], n: int) -> Row:
    gc.collect()
    with PeakRSS() as rss:
        t0 = time.perf_counter()
        vectors = fn()
        seconds = time.perf_counter() - t0
    row = Row(
        method=method,
        seconds=seconds,
        n_ok=int(vectors.shape[0]),
        peak_mb=rss.peak / 2**20,
        delta_mb=(rss.peak - rss.start_rss) / 2**20,
        vectors=vectors,
    )
    if row.n_ok != n:
        row.note = f"only {row.n_ok}/{n} embedded"
    print(
        f"  {method:<34} {row.ips:8.1f} img/s  {seconds:7.2f} s  "
        f"peak RSS {row.peak_mb:7.0f} MB (+{row.delta_mb:.0f})",
        flush=True,
    )
    return row


# ---------------------------------------------------------------------- methods


def ours(model_dir: str, paths: list[str], batch_size: int, num_workers, draft: bool):
    from bubblefence_plugin.embed import ImageEmbedder

    emb = ImageEmbedder(
        model_dir, device="auto", batch_size=batch_size, num_workers=num_workers, jpeg_draft=draft
    )
    emb.embed_paths(paths[: min(len(paths), batch_size)])  # warm-up, not timed

    def run() -> np.ndarray:
        out = emb.embed_paths(paths)
        return out.embeddings

    return emb, run


def naive(model_dir: str, paths: list[str], batch_size: int):
    import torch
    from PIL import Image
    from transformers import AutoImageProcessor, AutoModel

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    processor = AutoImageProcessor.from_pretrained(model_dir, use_fast=False)
    model = AutoModel.from_pretrained(model_dir).to(device).eval()

    def run(subset: list[str] = paths) -> np.ndarray:
        out = []
        with torch.inference_mode():
            for start in range(0, len(subset), batch_size):
                images = [Image.open(p).convert("RGB") for p in subset[start : start + batch_size]]
                pixels = processor(images=images, return_tensors="pt")["pixel_values"]
                feats = model.get_image_features(pixel_values=pixels.to(device))
                out.append(torch.nn.functional.normalize(feats.float(), dim=1).cpu().numpy())
        return np.concatenate(out)

    run(paths[: min(len(paths), batch_size)])  # warm-up, not timed
    return run


_MONGOD: subprocess.Popen | None = None


def start_mongod(db_dir: Path) -> str:
    """Our own mongod in a temp folder, stopped by us before the folder is deleted.

    Letting FiftyOne spawn one would leave it running past our cleanup.
    """
    import importlib.util
    import socket

    global _MONGOD
    spec = importlib.util.find_spec("fiftyone")
    if spec is None or spec.origin is None:
        raise RuntimeError("fiftyone is not installed")
    mongod = Path(spec.origin).parent / "db" / "bin" / "mongod"
    if not mongod.exists():
        raise RuntimeError(f"FiftyOne's mongod not found at {mongod}")
    db_dir.mkdir(parents=True, exist_ok=True)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    _MONGOD = subprocess.Popen(
        [str(mongod), "--dbpath", str(db_dir), "--port", str(port), "--bind_ip", "127.0.0.1"]
        + ["--nounixsocket", "--logpath", str(db_dir / "mongod.log")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 60
    while time.time() < deadline:
        if _MONGOD.poll() is not None:
            raise RuntimeError(f"mongod exited with code {_MONGOD.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return f"mongodb://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.2)
    raise RuntimeError("mongod did not start within 60 s")


def stop_mongod() -> None:
    global _MONGOD
    if _MONGOD is not None and _MONGOD.poll() is None:
        _MONGOD.terminate()
        try:
            _MONGOD.wait(timeout=30)
        except subprocess.TimeoutExpired:
            _MONGOD.kill()
            _MONGOD.wait()
    _MONGOD = None


def _ensure_torchvision(allow_stub: bool) -> str:
    """FiftyOne's torch integration imports torchvision at module level.

    Returns a note for the results table. With ``allow_stub``, a machine without a
    usable torchvision (torch CPU builds: the only torchvision wheels are CUDA builds)
    gets empty placeholder modules; the transformers path never calls torchvision,
    and any attribute lookup on the placeholders raises, so nothing is faked silently.
    """
    import importlib.machinery
    import types

    try:
        import torchvision  # noqa: F401

        return ""
    except Exception as exc:
        reason = f"torchvision not importable ({type(exc).__name__}: {exc})".splitlines()[0]
        if not allow_stub:
            raise RuntimeError(
                f"fiftyone.utils.torch needs torchvision: {reason}; "
                "pass --torchvision-stub to run FiftyOne's transformers path without it"
            ) from None

    class _Stub(types.ModuleType):
        def __getattr__(self, name: str):
            if name.startswith("__"):
                raise AttributeError(name)
            raise RuntimeError(f"torchvision stub: {self.__name__}.{name} was used")

    for name in (
        "torchvision",
        "torchvision.models",
        "torchvision.models.feature_extraction",
        "torchvision.transforms",
        "torchvision.transforms.functional",
    ):
        sys.modules.pop(name, None)
    for name in (
        "torchvision",
        "torchvision.models",
        "torchvision.models.feature_extraction",
        "torchvision.transforms",
        "torchvision.transforms.functional",
    ):
        mod = _Stub(name)
        mod.__spec__ = importlib.machinery.ModuleSpec(name, None)
        mod.__path__ = []
        sys.modules[name] = mod
    sys.modules["torchvision.models.feature_extraction"].create_feature_extractor = None
    sys.modules["torchvision.transforms"].functional = sys.modules[
        "torchvision.transforms.functional"
    ]
    sys.modules["torchvision"].__version__ = "0.0.0+stub"
    return "torchvision import stub (not installable with torch+cpu here)"


def fiftyone_path(
    model_dir: str, paths: list[str], batch_size: int, workdir: Path, allow_stub: bool
):
    """FiftyOne's own embedding path; returns (run, description) or raises with the reason."""
    if "FIFTYONE_DATABASE_URI" not in os.environ:
        os.environ["FIFTYONE_DATABASE_URI"] = start_mongod(workdir / "fo_db")
    stub_note = _ensure_torchvision(allow_stub)
    os.environ.setdefault("FIFTYONE_DO_NOT_TRACK", "true")
    os.environ.setdefault("FIFTYONE_DATABASE_VALIDATION", "false")
    os.environ.setdefault("FIFTYONE_MODEL_ZOO_DIR", str(workdir / "fo_zoo"))
    import fiftyone as fo
    import fiftyone.utils.torch as fout

    fo.config.show_progress_bars = False
    import fiftyone.utils.transformers as fouhf
    import torch
    from transformers import AutoModel

    hf_model = AutoModel.from_pretrained(model_dir)
    # What convert_transformers_model(hf_model, task="zero-shot-image-classification")
    # builds, except use_fast=False: FiftyOne forces the torchvision-based fast
    # processor, and the slow one gives the same pixels as the other two methods.
    config = fouhf.FiftyOneZeroShotTransformerForImageClassificationConfig(
        {
            "model": hf_model,
            "name_or_path": model_dir,
            "transforms_args": {"use_fast": False},
        }
    )
    model = fouhf.FiftyOneZeroShotTransformerForImageClassification(config)
    if torch.cuda.is_available():
        model._model.to("cuda")
    name = f"bench-embed-{os.getpid()}-{time.time_ns()}"
    dataset = fo.Dataset(name)
    dataset.add_samples([fo.Sample(filepath=p) for p in paths])
    warm = fo.Dataset(name + "-warm")
    warm.add_samples([fo.Sample(filepath=p) for p in paths[: min(len(paths), batch_size)]])
    warm.compute_embeddings(model, batch_size=batch_size, progress=False)
    workers = fout.recommend_num_workers(None)

    def run() -> np.ndarray:
        emb = dataset.compute_embeddings(model, batch_size=batch_size, progress=False)
        emb = np.asarray(emb, dtype=np.float32)
        return emb / np.linalg.norm(emb, axis=1, keepdims=True)

    def cleanup() -> None:
        dataset.delete()
        warm.delete()

    desc = f"{type(model).__name__}, DataLoader num_workers={workers} (FiftyOne default)"
    if stub_note:
        desc += "; " + stub_note
    return run, desc, cleanup


# ---------------------------------------------------------------------- reporting


def machine() -> dict[str, str]:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        n_cpu = len(os.sched_getaffinity(0))
    except AttributeError:
        n_cpu = os.cpu_count() or 1
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU"
    return {
        "cpu": f"{n_cpu} x {cpu}",
        "torch": torch.__version__,
        "torch_threads": str(torch.get_num_threads()),
        "device": device,
        "python": platform.python_version(),
    }


def _fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def append_results(rows: list[Row], args: argparse.Namespace, model_desc: str, info: dict) -> None:
    base = next((r for r in rows if r.method.startswith("naive") and r.seconds), None)
    date = dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    lines = [
        "",
        f"## Embedding throughput, {model_desc}, {args.n} x {args.width}x{args.height} JPEG"
        f" ({date})",
        "",
        f"`bench/bench_embed.py {' '.join(sys.argv[1:])}`".replace("  ", " "),
        f"Machine: {info['cpu']}; device {info['device']}; torch {info['torch']} "
        f"({info['torch_threads']} threads); Python {info['python']}; batch size "
        f"{args.batch_size}.",
        "Peak RSS: this process plus its worker children (not mongod), sampled every 10 ms"
        " during the timed run; (+N) is the rise over the RSS before the run.",
    ]
    if not args.model:
        lines.append(
            "Random weights: the cosine column only shows that each pipeline feeds the model"
            " the same pixels (up to JPEG-draft resampling); it says nothing about semantics."
        )
    lines += [
        "",
        "| method | images/s | seconds | peak RSS MB (+rise) | speed vs naive "
        "| cosine vs naive min / mean | note |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        ratio = (
            f"{(base.seconds / r.seconds):.2f}x" if base and r.seconds and base.seconds else "n/a"
        )
        cos = "n/a" if r.cos_min is None else f"{r.cos_min:.5f} / {r.cos_mean:.5f}"
        rss = "n/a" if r.peak_mb is None else f"{r.peak_mb:.0f} (+{r.delta_mb:.0f})"
        lines.append(
            f"| {r.method} | {_fmt(r.ips, '.1f')} | {_fmt(r.seconds, '.2f')} | {rss} "
            f"| {ratio} | {cos} | {r.note} |"
        )
    text = "\n".join(lines) + "\n"
    if not RESULTS.exists():
        RESULTS.write_text("# Benchmark results\n")
    with RESULTS.open("a", encoding="utf-8") as fh:
        fh.write(text)
    print(f"appended to {RESULTS.relative_to(ROOT)}")


# -------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=2000, help="number of images (default 2000)")
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--model", help="hub name or local folder (default: a tiny random CLIP)")
    group.add_argument(
        "--vit-b32-random",
        action="store_true",
        help="randomly initialised CLIP ViT-B/32 (default CLIPConfig): the real compute cost",
    )
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--num-workers", default="auto", help="our decoding threads")
    parser.add_argument("--skip-fiftyone", action="store_true")
    parser.add_argument(
        "--torchvision-stub",
        action="store_true",
        help="let FiftyOne's torch utils import without torchvision (see _ensure_torchvision)",
    )
    parser.add_argument("--no-record", action="store_true", help="do not append to RESULTS.md")
    args = parser.parse_args(argv)
    if args.n < 1 or args.batch_size < 1:
        parser.error("--n and --batch-size must be >= 1")
    workers = args.num_workers if args.num_workers == "auto" else int(args.num_workers)

    workdir = Path(tempfile.mkdtemp(prefix="bench_embed_"))
    rows: list[Row] = []
    try:
        t0 = time.perf_counter()
        image_dir = workdir / "images"
        image_dir.mkdir()
        paths = write_images(image_dir, args.n, args.width, args.height)
        size_mb = sum(os.path.getsize(p) for p in paths) / 2**20
        print(
            f"wrote {len(paths)} JPEGs ({size_mb:.0f} MB) in {time.perf_counter() - t0:.1f} s",
            flush=True,
        )

        if args.model:
            model_dir, model_desc = args.model, f"`{args.model}`"
        else:
            model_dir = build_random_clip(workdir / "model", vit_b32=args.vit_b32_random)
            model_desc = (
                "random-init CLIP ViT-B/32 (default CLIPConfig)"
                if args.vit_b32_random
                else "tiny random CLIP (32 px, 2 layers, dim 16)"
            )
        info = machine()
        print(f"model: {model_desc}; machine: {info}", flush=True)

        # Each method loads its own copy of the model; dropping the previous one first
        # keeps the absolute peak RSS figures comparable between rows.
        emb, run_ours = ours(model_dir, paths, args.batch_size, workers, draft=True)
        label = f"BubbleFence ImageEmbedder ({emb.num_workers} threads)"
        rows.append(measure(label, run_ours, args.n))
        del emb, run_ours
        gc.collect()
        emb, run_full = ours(model_dir, paths, args.batch_size, workers, draft=False)
        rows.append(measure("BubbleFence, jpeg_draft=False", run_full, args.n))
        del emb, run_full
        gc.collect()
        run_naive = naive(model_dir, paths, args.batch_size)
        rows.append(measure("naive loop (no workers)", run_naive, args.n))
        del run_naive
        gc.collect()

        if args.skip_fiftyone:
            rows.append(Row("FiftyOne compute_embeddings", note="skipped (--skip-fiftyone)"))
        else:
            try:
                run_fo, desc, cleanup = fiftyone_path(
                    model_dir, paths, args.batch_size, workdir, args.torchvision_stub
                )
            except Exception as exc:
                reason = f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
                print(f"  FiftyOne row skipped: {reason}", flush=True)
                traceback.print_exc()
                rows.append(Row("FiftyOne compute_embeddings", note=f"skipped: {reason}"))
            else:
                row = measure("FiftyOne compute_embeddings", run_fo, args.n)
                row.note = (row.note + "; " if row.note else "") + desc
                rows.append(row)
                cleanup()

        reference = next(r.vectors for r in rows if r.method.startswith("naive"))
        for r in rows:
            if r.vectors is not None and r.vectors.shape == reference.shape:
                cos = np.sum(r.vectors * reference, axis=1)
                r.cos_min, r.cos_mean = float(cos.min()), float(cos.mean())

        base = next(r for r in rows if r.method.startswith("naive"))
        print("\nmethod                              images/s  seconds  vs naive  cos(min)")
        for r in rows:
            ratio = f"{base.seconds / r.seconds:.2f}x" if r.seconds else "n/a"
            cmin = "n/a" if r.cos_min is None else f"{r.cos_min:.5f}"
            print(
                f"{r.method[:34]:<34} {_fmt(r.ips, '8.1f')} {_fmt(r.seconds, '8.2f')} "
                f"{ratio:>9} {cmin:>9}  {r.note}"
            )
        print(
            f"process ru_maxrss: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB"
        )
        if not args.no_record:
            append_results(rows, args, model_desc, info)
    finally:
        stop_mongod()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
