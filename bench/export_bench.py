"""Exported models against PyTorch on the CPU: the latency of one forward pass per batch for the
same weights run eagerly, as TorchScript and in ONNX Runtime, and their largest difference in
probabilities. Writes bench/export.md.

    OMP_NUM_THREADS=1 python bench/export_bench.py [--repeats 30] [--out bench/export.md]

Each backbone is a freshly initialised model saved as a SAGE model.pt (weights do not change the
cost); every runtime uses one thread, so the ratios compare the runtimes, not the thread pools.
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import pct
from sage.backbones import create_model
from sage.config import TrainConfig
from sage.export import export_archive, read_archive
from sage.training import save_model
from sage.transforms import normalize

CASES = [("tiny", 64), ("resnet18", 224)]
BATCHES = (1, 16)


def _time(fn, repeats: int) -> list[float]:
    fn()  # warm-up (allocations, ONNX Runtime's first run)
    out = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        out.append((time.perf_counter() - started) * 1000)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--out", default="bench/export.md")
    args = parser.parse_args()
    torch.set_num_threads(1)
    import onnxruntime

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for backbone, size in CASES:
            config = TrainConfig.from_dict({"backbone": backbone, "image_size": size, "labels": ["a", "b"],
                                            "allow_coarse_cam": True})  # fmt: skip
            model = create_model(backbone, 2, image_size=size).eval()
            model_pt = Path(tmp) / f"{backbone}.pt"
            save_model(model_pt, model, config, ["a", "b"], {"temperature": 1.0})
            runners = {}
            for fmt in ("torchscript", "onnx"):
                archive = Path(tmp) / f"{backbone}-{fmt}.zip"
                export_archive(model_pt, archive, fmt)
                runners[fmt] = read_archive(archive)
            opts = onnxruntime.SessionOptions()
            opts.intra_op_num_threads = opts.inter_op_num_threads = 1
            runners["onnx"].runner = onnxruntime.InferenceSession(  # one thread, like the others
                _onnx_bytes(Path(tmp) / f"{backbone}-onnx.zip"), opts, providers=["CPUExecutionProvider"]
            )
            for batch in BATCHES:
                x = np.random.default_rng(0).random((batch, 3, size, size), dtype=np.float32)
                t = torch.from_numpy(x)

                def eager(t=t, model=model):
                    with torch.inference_mode():
                        return torch.softmax(model(normalize(t)), dim=1).numpy()

                reference = eager()
                timings = {"PyTorch (eager)": _time(eager, args.repeats)}
                diffs = {"PyTorch (eager)": 0.0}
                for fmt, label in (("torchscript", "TorchScript"), ("onnx", "ONNX Runtime")):
                    runner = runners[fmt]
                    timings[label] = _time(lambda runner=runner, x=x: runner.probabilities(x), args.repeats)
                    diffs[label] = float(np.abs(runner.probabilities(x) - reference).max())
                base = pct(timings["PyTorch (eager)"], 50)
                for label, values in timings.items():
                    rows.append((backbone, size, batch, label, pct(values, 50), pct(values, 95),
                                 pct(values, 50) / base, diffs[label]))  # fmt: skip
    lines = [
        "# Exported models against PyTorch (CPU, one thread)",
        "",
        f"`python bench/export_bench.py --repeats {args.repeats}` on {platform.processor() or platform.machine()}, "
        f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}; the machine was shared with other "
        "jobs, so compare the ratios (measured in one run), not the absolute times.",
        "",
        "| backbone | input | batch | runtime | p50 ms | p95 ms | p50 vs eager | max abs. diff. in probabilities |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for backbone, size, batch, label, p50, p95, ratio, diff in rows:
        lines.append(
            f"| {backbone} | {size} px | {batch} | {label} | {p50:.2f} | {p95:.2f} | {ratio:.2f}x | {diff:.1e} |"
        )
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def _onnx_bytes(archive: Path) -> bytes:
    import zipfile

    with zipfile.ZipFile(archive) as zf:
        return zf.read("model.onnx")


if __name__ == "__main__":
    main()
