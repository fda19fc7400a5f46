"""A Siamese network on scikit-learn's bundled digits, trained on pairs.

The smallest complete use of the package: an encoder, `PairDistance` and
`ContrastiveLoss`, trained on fresh random pairs each epoch, then evaluated
on pairs of held-out images. Runs offline on a CPU in well under a minute.

    python examples/siamese_pairs.py [--epochs 15] [--smoke]

Pair labels: 0 = similar (same digit), 1 = dissimilar.
"""

import argparse

import keras
import numpy as np
from sklearn.datasets import load_digits

from keras_contrastive.layers import PairDistance
from keras_contrastive.losses import ContrastiveLoss


def sample_pairs(y, count, rng):
    """Index pairs, half of the same class, labelled 0 = similar."""
    by_class = {c: np.flatnonzero(y == c) for c in np.unique(y)}
    first = rng.integers(0, len(y), size=count)
    same = rng.random(count) < 0.5
    second = np.empty(count, dtype=int)
    for i, (anchor, is_same) in enumerate(zip(first, same)):
        if is_same:
            second[i] = rng.choice(by_class[y[anchor]])
        else:
            other = rng.choice([c for c in by_class if c != y[anchor]])
            second[i] = rng.choice(by_class[other])
    return first, second, (~same).astype("float32")


def build_siamese(input_dim, embedding_dim=32):
    encoder = keras.Sequential(
        [
            keras.Input((input_dim,)),
            keras.layers.Rescaling(1.0 / 16.0),  # digits are 0..16
            keras.layers.Dense(128, activation="relu"),
            keras.layers.Dense(embedding_dim),
        ],
        name="encoder",
    )
    a, b = keras.Input((input_dim,)), keras.Input((input_dim,))
    distance = PairDistance(name="distance")([encoder(a), encoder(b)])
    return keras.Model([a, b], distance, name="siamese")


def best_threshold(distances, labels):
    """The distance threshold with the best accuracy (label 0 = similar)."""
    candidates = np.unique(distances)
    accuracies = [np.mean((distances > t) == labels) for t in candidates]
    return candidates[int(np.argmax(accuracies))]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--pairs-per-epoch", type=int, default=4096)
    parser.add_argument("--margin", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smoke", action="store_true",
                        help="one short epoch, to check the script runs")
    args = parser.parse_args(argv)
    if args.smoke:
        args.epochs, args.pairs_per_epoch = 1, 512

    keras.utils.set_random_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    x, y = load_digits(return_X_y=True)
    x = x.astype("float32")
    order = rng.permutation(len(x))
    split = int(0.8 * len(x))
    train, test = order[:split], order[split:]

    model = build_siamese(x.shape[1])
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=ContrastiveLoss(margin=args.margin),
    )
    for epoch in range(args.epochs):  # fresh pairs every epoch
        first, second, labels = sample_pairs(
            y[train], args.pairs_per_epoch, rng
        )
        history = model.fit(
            [x[train][first], x[train][second]], labels,
            batch_size=128, verbose=0,
        )
        print(f"epoch {epoch + 1}/{args.epochs} "
              f"loss {history.history['loss'][0]:.4f}")

    first, second, labels = sample_pairs(y[train], 2048, rng)
    train_distances = model.predict(
        [x[train][first], x[train][second]], verbose=0
    )[:, 0]
    threshold = best_threshold(train_distances, labels)

    first, second, labels = sample_pairs(y[test], 2048, rng)
    test_distances = model.predict(
        [x[test][first], x[test][second]], verbose=0
    )[:, 0]
    accuracy = np.mean((test_distances > threshold) == labels)
    print(f"threshold {threshold:.3f} (chosen on training pairs)")
    print(f"held-out pair accuracy: {accuracy:.4f}")
    return accuracy


if __name__ == "__main__":
    main()
