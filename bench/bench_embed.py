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
bench/RESULTS.md. On CUDA it also samples GPU utilisation (NVML, else nvidia-smi)
during every timed run.

    .venv/bin/python bench/bench_embed.py                        # tiny CLIP, 2000 images
    .venv/bin/python bench/bench_embed.py --vit-b32-random --n 500
    .venv/bin/python bench/bench_embed.py --model openai/clip-vit-base-patch32

The GPU benchmark of issue 16 is one command (random-init ViT-B/32 at its real size,
4000 640x480 JPEGs, batch sizes 64-512; ours, the naive loop and FiftyOne per batch
size, plus a decode-only and a model-only row that tell which side limits; a verdict
against the target of 2,000 images/s with the GPU >= 80 % busy):

    python3 bench/bench_embed.py --gpu-suite --results "$OUT/RESULTS-gpu.md"

On CPU the same command runs at a tiny size as a check:
``--gpu-suite --n 16 --batch-sizes 8 --no-record`` (a few minutes on 2 cores).
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
GPU_SUITE_N = 4000  # "a few thousand": each timed GPU run lasts over a second, not a blip
GPU_SUITE_BATCHES = (64, 128, 256, 512)
STAGE_ROWS = ("decode only", "model only")  # one stage alone: no naive reference
TARGET_IPS = 2000  # issue 16: images/s on a data-centre GPU ...
TARGET_GPU_UTIL = 80.0  # ... with the GPU at least this busy (%)
GPU_SAMPLE_S = 0.1  # NVML refreshes utilisation every 1/6 s to 1 s; sample faster


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


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable character table (here because
    transformers 5 no longer exports it from tokenization_clip)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    printable += range(ord("®"), ord("ÿ") + 1)
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def _byte_level_tokenizer(folder: Path):
    """A minimal CLIP tokenizer (single bytes, no merges) so AutoProcessor can load.

    FiftyOne loads the full CLIPProcessor, which needs a tokenizer; our embedder
    does not. The text tower is never run by any method here.
    """
    from transformers import CLIPTokenizer

    chars = list(_bytes_to_unicode().values())
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


class GpuUtil:
    """Mean GPU utilisation (%) while a timed run lasts: NVML (nvidia-ml-py), else
    ``nvidia-smi``; ``mean`` stays None without either (or without CUDA)."""

    def __init__(self) -> None:
        self.mean: float | None = None
        self._samples: list[float] = []
        self._stop = threading.Event()
        self._read = self._reader()

    @staticmethod
    def _reader() -> Callable[[], float] | None:
        import torch

        if not torch.cuda.is_available():
            return None
        index = torch.cuda.current_device()
        try:
            import pynvml

            pynvml.nvmlInit()
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            return lambda: float(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu)
        except Exception:
            pass
        if shutil.which("nvidia-smi") is None:
            return None
        cmd = ["nvidia-smi", "-i", str(index), "--query-gpu=utilization.gpu"]
        cmd += ["--format=csv,noheader,nounits"]
        return lambda: float(subprocess.check_output(cmd, text=True).strip().splitlines()[0])

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._samples.append(self._read())
            except Exception:
                pass
            self._stop.wait(GPU_SAMPLE_S)

    def __enter__(self) -> GpuUtil:
        if self._read is not None:
            self._thread = threading.Thread(target=self._loop, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._read is None:
            return
        self._stop.set()
        self._thread.join()
        if self._samples:
            self.mean = float(np.mean(self._samples))


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
    batch_size: int | None = None
    gpu_util: float | None = None

    @property
    def ips(self) -> float | None:
        return None if not self.seconds else self.n_ok / self.seconds


def measure(
    method: str, fn: Callable[[], np.ndarray], n: int, batch_size: int | None = None
) -> Row:
    gc.collect()
    with PeakRSS() as rss, GpuUtil() as gpu:
        t0 = time.perf_counter()
        vectors = fn()
        seconds = time.perf_counter() - t0
    row = Row(
        batch_size=batch_size,
        gpu_util=gpu.mean,
        method=method,
        seconds=seconds,
        n_ok=int(vectors.shape[0]),
        peak_mb=rss.peak / 2**20,
        delta_mb=(rss.peak - rss.start_rss) / 2**20,
        vectors=vectors,
    )
    if row.n_ok != n:
        row.note = f"only {row.n_ok}/{n} embedded"
    util = "" if gpu.mean is None else f"  GPU {gpu.mean:5.1f} %"
    print(
        f"  {method:<34} {row.ips:8.1f} img/s  {seconds:7.2f} s  "
        f"peak RSS {row.peak_mb:7.0f} MB (+{row.delta_mb:.0f}){util}",
        flush=True,
    )
    return row


# ---------------------------------------------------------------------- methods


def ours(model_dir: str, paths: list[str], batch_size: int, num_workers, draft: bool):
    from bubblefence_plugin.embedder import ImageEmbedder

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


def decode_only(emb, paths: list[str]) -> Callable[[], np.ndarray]:
    """Our decoding and preprocessing alone, on the embedder's threads: the most images/s
    the model could be fed (private calls on purpose: this isolates one stage)."""
    from concurrent.futures import ThreadPoolExecutor

    def run() -> np.ndarray:
        with ThreadPoolExecutor(max(1, emb.num_workers)) as pool:
            n = sum(1 for _ in pool.map(emb._prepare_path, paths))
        return np.zeros((n, 1), dtype=np.float32)

    return run


def model_only(emb, paths: list[str], batch_size: int) -> tuple[Callable[[], np.ndarray], int]:
    """The model alone on one pre-decoded image repeated: host stacking, pinned copy,
    forward and copy back, as in a real run but with no decoding to wait for."""
    pixels = emb._prepare_path(paths[0])
    batch = [pixels] * batch_size
    n_batches = max(1, len(paths) // batch_size)

    def run() -> np.ndarray:
        out, pending = [], None
        with emb._run_context():
            for _ in range(n_batches):
                launched = emb._launch(batch, list(range(batch_size)))
                if pending is not None:
                    out.append(pending.result())
                pending = launched
            out.append(pending.result())
        return np.concatenate(out)

    return run, n_batches * batch_size


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

    def run(bs: int = batch_size) -> np.ndarray:
        emb = dataset.compute_embeddings(model, batch_size=bs, progress=False)
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
    device = "CPU"
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        device = (
            f"{props.name} ({props.total_memory / 2**30:.0f} GiB, "
            f"{props.multi_processor_count} SMs, CUDA {torch.version.cuda})"
        )
    return {
        "cpu": f"{n_cpu} x {cpu}",
        "torch": torch.__version__,
        "torch_threads": str(torch.get_num_threads()),
        "device": device,
        "python": platform.python_version(),
    }


def _fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def _naive_for(rows: list[Row], r: Row) -> Row | None:
    """The naive row of the same batch size (else any): the speed and cosine reference of
    the full pipelines; the single-stage rows have none."""
    if r.method.startswith(STAGE_ROWS):
        return None
    naive_rows = [x for x in rows if x.method.startswith("naive") and x.seconds]
    same = [x for x in naive_rows if x.batch_size == r.batch_size]
    return (same or naive_rows or [None])[0]


def verdict(rows: list[Row]) -> list[str]:
    """Against issue 16's target, and which stage limits (decode or model), in words."""
    ours_rows = [r for r in rows if r.method.startswith("BubbleFence ImageEmbedder") and r.ips]
    if not ours_rows:
        return []
    best = max(ours_rows, key=lambda r: r.ips)
    util = "n/a" if best.gpu_util is None else f"{best.gpu_util:.0f} %"
    met = best.ips >= TARGET_IPS and (best.gpu_util or 0.0) >= TARGET_GPU_UTIL
    lines = [
        f"Best of ours: {best.ips:.0f} images/s at batch {best.batch_size}, GPU busy {util}; "
        f"target {TARGET_IPS} images/s at >= {TARGET_GPU_UTIL:.0f} %: "
        + ("met." if met else "not met.")
    ]
    decode = next((r for r in rows if r.method.startswith("decode only") and r.ips), None)
    model = [r for r in rows if r.method.startswith("model only") and r.ips]
    model_best = max(model, key=lambda r: r.ips) if model else None
    if decode and model_best:
        limit = "decoding" if decode.ips < model_best.ips else "the model"
        lines.append(
            f"Stages alone: decoding {decode.ips:.0f} images/s, model {model_best.ips:.0f} "
            f"images/s (batch {model_best.batch_size}): {limit} limits, by "
            f"{max(decode.ips, model_best.ips) / min(decode.ips, model_best.ips):.2f}x; "
            f"ours reaches {best.ips / min(decode.ips, model_best.ips):.0%} of the slower stage."
        )
    return lines


def append_results(
    rows: list[Row], args: argparse.Namespace, model_desc: str, info: dict, path: Path
) -> None:
    date = dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    lines = [
        "",
        f"## Embedding throughput, {model_desc}, {args.n} x {args.width}x{args.height} JPEG"
        f" ({date})",
        "",
        f"`bench/bench_embed.py {' '.join(sys.argv[1:])}`".replace("  ", " "),
        f"Machine: {info['cpu']}; device {info['device']}; torch {info['torch']} "
        f"({info['torch_threads']} threads); Python {info['python']}; batch sizes "
        f"{', '.join(map(str, args.batch_sizes))}.",
        "Peak RSS: this process plus its worker children (not mongod), sampled every 10 ms"
        " during the timed run; (+N) is the rise over the RSS before the run. GPU util:"
        f" mean of NVML's utilisation sampled every {GPU_SAMPLE_S} s during the run.",
    ]
    if not args.model:
        lines.append(
            "Random weights: the cosine column only shows that each pipeline feeds the model"
            " the same pixels (up to JPEG-draft resampling); it says nothing about semantics."
        )
    lines += [
        "",
        "| method | batch | images/s | seconds | GPU util % | peak RSS MB (+rise) "
        "| speed vs naive | cosine vs naive min / mean | note |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        base = _naive_for(rows, r)
        ratio = (
            f"{(base.seconds / r.seconds):.2f}x" if base and r.seconds and base.seconds else "n/a"
        )
        cos = "n/a" if r.cos_min is None else f"{r.cos_min:.5f} / {r.cos_mean:.5f}"
        rss = "n/a" if r.peak_mb is None else f"{r.peak_mb:.0f} (+{r.delta_mb:.0f})"
        lines.append(
            f"| {r.method} | {r.batch_size or ''} | {_fmt(r.ips, '.1f')} "
            f"| {_fmt(r.seconds, '.2f')} | {_fmt(r.gpu_util, '.0f')} | {rss} "
            f"| {ratio} | {cos} | {r.note} |"
        )
    found = verdict(rows)
    if found:
        lines += [""] + found
    text = "\n".join(lines) + "\n"
    if not path.exists():
        path.write_text("# Benchmark results\n")
    with path.open("a", encoding="utf-8") as fh:
        fh.write(text)
    print(f"appended to {path}")


# -------------------------------------------------------------------------- main


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, help="number of images (default 2000; suite 4000)")
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--model", help="hub name or local folder (default: a tiny random CLIP)")
    group.add_argument(
        "--vit-b32-random",
        action="store_true",
        help="randomly initialised CLIP ViT-B/32 (default CLIPConfig): the real compute cost",
    )
    parser.add_argument(
        "--batch-sizes",
        help="comma-separated batch sizes, each measured for every method (default 64; "
        "suite 64,128,256,512)",
    )
    parser.add_argument("--batch-size", type=int, help="one batch size (same as --batch-sizes N)")
    parser.add_argument("--num-workers", default="auto", help="our decoding threads")
    parser.add_argument("--skip-fiftyone", action="store_true")
    parser.add_argument(
        "--torchvision-stub",
        action="store_true",
        help="let FiftyOne's torch utils import without torchvision (see _ensure_torchvision)",
    )
    parser.add_argument(
        "--gpu-suite",
        action="store_true",
        help="issue 16's GPU benchmark: random ViT-B/32 (unless --model), 4000 images, batch "
        "sizes 64-512, decode-only and model-only rows, verdict against the target",
    )
    parser.add_argument(
        "--results", type=Path, default=RESULTS, help=f"Markdown file to append to ({RESULTS})"
    )
    parser.add_argument("--no-record", action="store_true", help="do not append the table")
    args = parser.parse_args(argv)
    if args.batch_sizes and args.batch_size:
        parser.error("give --batch-sizes or --batch-size, not both")
    if args.gpu_suite and not args.model:
        args.vit_b32_random = True
    if args.n is None:
        args.n = GPU_SUITE_N if args.gpu_suite else 2000
    if args.batch_sizes:
        try:
            args.batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
        except ValueError:
            parser.error(f"--batch-sizes: comma-separated ints, got {args.batch_sizes!r}")
    elif args.batch_size:
        args.batch_sizes = [args.batch_size]
    else:
        args.batch_sizes = list(GPU_SUITE_BATCHES) if args.gpu_suite else [64]
    if args.n < 1 or min(args.batch_sizes) < 1:
        parser.error("--n and the batch sizes must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
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

        fo_run = None
        if args.skip_fiftyone:
            rows.append(Row("FiftyOne compute_embeddings", note="skipped (--skip-fiftyone)"))
        else:
            try:
                fo_run, fo_desc, fo_cleanup = fiftyone_path(
                    model_dir, paths, args.batch_sizes[0], workdir, args.torchvision_stub
                )
            except Exception as exc:
                reason = f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
                print(f"  FiftyOne rows skipped: {reason}", flush=True)
                traceback.print_exc()
                rows.append(Row("FiftyOne compute_embeddings", note=f"skipped: {reason}"))

        # Each method loads its own copy of the model; dropping the previous one first
        # keeps the absolute peak RSS figures comparable between rows.
        first = args.batch_sizes[0]
        emb, _ = ours(model_dir, paths, first, workers, draft=True)
        rows.append(
            measure(f"decode only ({emb.num_workers} threads)", decode_only(emb, paths), args.n)
        )
        for bs in args.batch_sizes:
            run_model, n_model = model_only(emb, paths, bs)
            run_model()  # warm-up (cuDNN/cuBLAS choices for this shape), not timed
            rows.append(measure("model only (pre-decoded pixels)", run_model, n_model, bs))
        del emb
        gc.collect()
        for bs in args.batch_sizes:
            emb, run_ours = ours(model_dir, paths, bs, workers, draft=True)
            label = f"BubbleFence ImageEmbedder ({emb.num_workers} threads)"
            rows.append(measure(label, run_ours, args.n, bs))
            del emb, run_ours
            gc.collect()
            if bs == first:
                emb, run_full = ours(model_dir, paths, bs, workers, draft=False)
                rows.append(measure("BubbleFence, jpeg_draft=False", run_full, args.n, bs))
                del emb, run_full
                gc.collect()
            run_naive = naive(model_dir, paths, bs)
            rows.append(measure("naive loop (no workers)", run_naive, args.n, bs))
            del run_naive
            gc.collect()
            if fo_run is not None:
                row = measure("FiftyOne compute_embeddings", lambda b=bs: fo_run(b), args.n, bs)
                row.note = (row.note + "; " if row.note else "") + fo_desc
                rows.append(row)
        if fo_run is not None:
            fo_cleanup()

        for r in rows:
            ref = _naive_for(rows, r)
            if r.vectors is not None and ref is not None and r.vectors.shape == ref.vectors.shape:
                cos = np.sum(r.vectors * ref.vectors, axis=1)
                r.cos_min, r.cos_mean = float(cos.min()), float(cos.mean())

        print("\nmethod                            batch  images/s  seconds  GPU %  vs naive")
        for r in rows:
            base = _naive_for(rows, r)
            ratio = f"{base.seconds / r.seconds:.2f}x" if r.seconds and base else "n/a"
            print(
                f"{r.method[:34]:<34}{r.batch_size or '':>5} {_fmt(r.ips, '8.1f')} "
                f"{_fmt(r.seconds, '8.2f')} {_fmt(r.gpu_util, '6.0f')} {ratio:>9}  {r.note}"
            )
        for line in verdict(rows):
            print(line)
        print(
            f"process ru_maxrss: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB"
        )
        if not args.no_record:
            append_results(rows, args, model_desc, info, args.results)
    finally:
        stop_mongod()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
