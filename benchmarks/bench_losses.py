"""Benchmark: in-batch contrastive loss vs one plain matmul, one JSON line.

For each batch size B (D = 128, float32) it times, forward + backward with
respect to the embeddings, `BatchContrastiveLoss` with miner "all" and with
miner "batch_hard", and one ``[B, D] @ [D, B]`` matmul as the unit. Each
is timed with and without ``jit_compile`` and taken at its faster setting;
the ratios are loss time / matmul time. Targets: "all" <= 4x at B = 1024
and <= 3x at B = 4096; "batch_hard" half a matmul more.

    python benchmarks/bench_losses.py [--sizes 256 1024 4096] [--repeats 10]
"""

import argparse
import json
import os
import platform
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from keras_contrastive.losses import BatchContrastiveLoss  # noqa: E402

DIMENSION = 128
TARGETS = {"all": {1024: 4.0, 4096: 3.0}, "batch_hard": {1024: 4.5, 4096: 3.5}}


def _time_round_robin(functions, *args, repeats):
    """Median milliseconds of each function, called in turn `repeats` times.

    Interleaving the candidates makes the ratios robust to a machine whose
    load changes during the run.
    """
    for function in functions.values():
        function(*args)  # compile / warm up
        function(*args)
    times = {name: [] for name in functions}
    for _ in range(repeats):
        for name, function in functions.items():
            start = time.perf_counter()
            result = function(*args)
            tf.nest.map_structure(lambda t: t.numpy(), result)
            times[name].append(time.perf_counter() - start)
    return {name: float(np.median(t) * 1e3) for name, t in times.items()}


def _matmul():
    def run(x, labels):
        return tf.matmul(x, x, transpose_b=True)

    return run


def _loss_and_gradient(miner):
    loss = BatchContrastiveLoss(miner=miner)

    def make():
        def run(x, labels):
            with tf.GradientTape() as tape:
                tape.watch(x)
                value = loss(labels, x)
            return value, tape.gradient(value, x)

        return run

    return make


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+",
                        default=[256, 1024, 4096])
    parser.add_argument("--repeats", type=int, default=10)
    arguments = parser.parse_args()

    rng = np.random.default_rng(0)
    report = {
        "benchmark": "bench_losses",
        "dimension": DIMENSION,
        "dtype": "float32",
        "tensorflow": tf.__version__,
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "results": [],
    }
    for size in arguments.sizes:
        x = tf.constant(
            rng.normal(size=(size, DIMENSION)).astype("float32") * 0.1
        )
        # 32 examples per class, like a P x K batch.
        labels = tf.constant(np.arange(size) // 32, dtype="int32")
        repeats = max(5, arguments.repeats * 1024 // max(size, 1024))
        makers = {"matmul": _matmul, "all": _loss_and_gradient("all"),
                  "batch_hard": _loss_and_gradient("batch_hard")}
        functions = {
            (name, jit): tf.function(make(), jit_compile=jit)
            for name, make in makers.items()
            for jit in (False, True)
        }
        timings = _time_round_robin(functions, x, labels, repeats=repeats)
        row = {"B": size}
        for name in makers:
            by_jit = {jit: timings[(name, jit)] for jit in (False, True)}
            jit = min(by_jit, key=by_jit.get)
            row[f"{name}_ms"] = round(by_jit[jit], 3)
            row[f"{name}_jit"] = jit
            row[f"{name}_ms_by_jit"] = {
                str(key): round(value, 3) for key, value in by_jit.items()
            }
        for miner in ("all", "batch_hard"):
            ratio = row[f"{miner}_ms"] / row["matmul_ms"]
            row[f"{miner}_ratio"] = round(ratio, 2)
            target = TARGETS[miner].get(size)
            if target is not None:
                row[f"{miner}_target"] = target
                row[f"{miner}_meets_target"] = bool(ratio <= target)
        report["results"].append(row)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
