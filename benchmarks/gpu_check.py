"""Train the MNIST-shaped Siamese CNN under MirroredStrategy and bfloat16.

Prints one JSON line: replicas, pairs per second, the share of step time
spent waiting for the input pipeline, and the final loss (which must be
finite). Runs on any machine: all local GPUs when there are some, else the
CPU (then it only checks that the path works; the numbers mean little).

    python benchmarks/gpu_check.py [--steps 300] [--batch-size 1024]
        [--data ../shared/data/mnist_test.npz]

Run by benchmarks/gpu_check.sh, which also installs what is missing.
"""

import argparse
import json
import math
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from keras_contrastive.data import make_pair_dataset  # noqa: E402
from keras_contrastive.distribute import (  # noqa: E402
    get_strategy,
    per_replica_batch_size,
)
from keras_contrastive.losses import ContrastiveLoss  # noqa: E402
from keras_contrastive.models import SiameseModel, build_encoder  # noqa: E402
from keras_contrastive.training import _build  # noqa: E402


def mnist_shaped(path):
    if path and os.path.isfile(path):
        with np.load(path) as data:
            return data["x"], data["y"].astype("int64")
    rng = np.random.default_rng(0)  # 60,000 x 28 x 28 uint8, 10 classes
    y = rng.integers(0, 10, size=60_000)
    x = rng.integers(0, 256, size=(60_000, 28, 28), dtype=np.uint8)
    return x, y


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=1024,
                        help="global batch of pairs")
    parser.add_argument("--policy", default="mixed_bfloat16")
    parser.add_argument("--data", default=None,
                        help="an .npz with x [N, 28, 28] uint8 and y")
    args = parser.parse_args(argv)

    gpus = tf.config.list_logical_devices("GPU")
    strategy = (get_strategy("mirrored") if gpus
                else get_strategy("default"))
    per_replica_batch_size(args.batch_size, strategy)
    keras.mixed_precision.set_global_policy(args.policy)
    x, y = mnist_shaped(args.data)
    dataset = make_pair_dataset(
        x, y, batch_size=args.batch_size, seed=0, drop_remainder=True
    ).repeat()
    with strategy.scope():
        model = SiameseModel(build_encoder((28, 28), embedding_dim=64,
                                           rescaling=1 / 255))
        model.compile(optimizer=keras.optimizers.Adam(1e-3),
                      loss=ContrastiveLoss())
        _build(model, next(iter(dataset)))

    @tf.function
    def step(batch):
        strategy.run(model.train_step, args=(batch,))

    iterator = iter(strategy.experimental_distribute_dataset(dataset))
    waited = total = 0.0
    for index in range(args.warmup + args.steps):
        started = time.perf_counter()
        batch = next(iterator)
        fetched = time.perf_counter()
        step(batch)
        loss = float(model.get_metrics_result()["loss"])  # waits for the step
        finished = time.perf_counter()
        if index >= args.warmup:
            waited += fetched - started
            total += finished - started
    print(json.dumps({
        "benchmark": "gpu_check",
        "devices": [d.name for d in gpus] or ["CPU"],
        "replicas": strategy.num_replicas_in_sync,
        "policy": args.policy,
        "global_batch_pairs": args.batch_size,
        "steps": args.steps,
        "pairs_per_s": round(args.steps * args.batch_size / total, 1),
        "images_per_s": round(2 * args.steps * args.batch_size / total, 1),
        "input_wait_share": round(waited / total, 4),
        "final_loss": loss,
        "loss_finite": math.isfinite(loss),
    }))
    return 0 if math.isfinite(loss) else 1


if __name__ == "__main__":
    raise SystemExit(main())
