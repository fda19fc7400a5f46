"""Train a Siamese network on several workers (MultiWorkerMirroredStrategy).

Run as is, it starts 2 worker processes on 127.0.0.1 (free ports, a
TF_CONFIG each), trains a few steps with `keras_contrastive.distribute.train`
and checks that both workers end with identical weights, equal to one
process trained on the same global batches:

    python examples/multi_worker.py [--workers 2] [--steps 6]
    python examples/multi_worker.py --engine fit   # Keras's fit: fails,
                                                   # keras-team/keras#20585

On a real cluster, run the worker mode on every machine, each with its own
TF_CONFIG (see docs/distributed.md):

    python examples/multi_worker.py --worker --out weights.npz
"""

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile

import numpy as np

GLOBAL_BATCH = 64


def global_batches(steps, seed=0):
    """The same global batches of digit pairs (0 = similar) everywhere."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    rng = np.random.default_rng(seed)
    first = rng.integers(0, len(x), size=(steps, GLOBAL_BATCH))
    second = rng.integers(0, len(x), size=(steps, GLOBAL_BATCH))
    labels = (y[first] != y[second]).astype("float32")
    return x[first].astype("float32"), x[second].astype("float32"), labels


def build_model(keras):
    from keras_contrastive.layers import PairDistance
    from keras_contrastive.losses import ContrastiveLoss

    keras.utils.set_random_seed(0)
    encoder = keras.Sequential([
        keras.Input((64,)), keras.layers.Rescaling(1 / 16),
        keras.layers.Dense(32, activation="relu"), keras.layers.Dense(16),
    ])
    a, b = keras.Input((64,)), keras.Input((64,))
    model = keras.Model([a, b], PairDistance()([encoder(a), encoder(b)]))
    model.compile(optimizer=keras.optimizers.Adam(1e-3),
                  loss=ContrastiveLoss())
    return model


def run_worker(out, steps, engine, reference=False):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import tensorflow as tf

    from keras_contrastive.distribute import get_strategy, train

    strategy = get_strategy("default" if reference else "multi_worker")
    first, second, labels = global_batches(steps)

    def dataset_fn(context):
        # Every worker builds the global batches and keeps its own rows.
        rows = context.get_per_replica_batch_size(GLOBAL_BATCH)
        start = context.input_pipeline_id * rows
        data = tf.data.Dataset.from_tensor_slices(
            ((first[:, start:start + rows], second[:, start:start + rows]),
             labels[:, start:start + rows]))
        return data

    with strategy.scope():
        model = build_model(keras)
    if engine == "fit":
        model.fit(dataset_fn(tf.distribute.InputContext()), epochs=1)
    else:
        train(model, dataset_fn, strategy=strategy, epochs=1,
              steps_per_epoch=steps, verbose=0)
    np.savez(out, *model.get_weights())


def free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def launch(workers=2, steps=6, engine="train", timeout=240):
    """Run `workers` local workers and a reference; return their weights."""
    folder = tempfile.mkdtemp(prefix="multi_worker_")
    cluster = [f"127.0.0.1:{port}" for port in free_ports(workers)]
    command = [sys.executable, os.path.abspath(__file__), "--worker",
               "--steps", str(steps), "--engine", engine]
    processes = []
    for index in range(workers):
        env = dict(os.environ, CUDA_VISIBLE_DEVICES="", TF_CONFIG=json.dumps(
            {"cluster": {"worker": cluster},
             "task": {"type": "worker", "index": index}}))
        out = os.path.join(folder, f"worker_{index}.npz")
        processes.append(subprocess.Popen(command + ["--out", out], env=env))
    reference = os.path.join(folder, "reference.npz")
    processes.append(subprocess.Popen(
        command + ["--out", reference, "--reference"],
        env=dict(os.environ, CUDA_VISIBLE_DEVICES="")))
    try:
        codes = [p.wait(timeout=timeout) for p in processes]
    finally:
        for p in processes:
            p.kill()
    if any(codes):
        raise RuntimeError(f"a process failed: exit codes {codes}")

    def weights(path):
        with np.load(path) as data:
            return [data[f"arr_{i}"] for i in range(len(data.files))]

    return ([weights(os.path.join(folder, f"worker_{i}.npz"))
             for i in range(workers)], weights(reference))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--engine", choices=["train", "fit"], default="train")
    parser.add_argument("--worker", action="store_true",
                        help="run one worker (TF_CONFIG must be set)")
    parser.add_argument("--reference", action="store_true",
                        help="with --worker: one process, default strategy")
    parser.add_argument("--out", default="weights.npz")
    parser.add_argument("--smoke", action="store_true",
                        help="2 workers, 2 steps")
    args = parser.parse_args(argv)
    if args.worker:
        return run_worker(args.out, args.steps, args.engine, args.reference)
    steps = 2 if args.smoke else args.steps
    workers, reference = launch(args.workers, steps, args.engine)
    for other in workers[1:]:
        for a, b in zip(workers[0], other):
            np.testing.assert_array_equal(a, b)
    difference = max(np.max(np.abs(a - b)) for a, b in
                     zip(workers[0], reference))
    for a, b in zip(workers[0], reference):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    print(f"{args.workers} workers agree exactly; largest difference from "
          f"one process on the same global batches: {difference:.2e}")
    return difference


if __name__ == "__main__":
    main()
