"""A Siamese network on scikit-learn's bundled 8x8 digits, in the library.

`SiameseModel` (one shared CNN encoder, the distance of a pair out, no
sigmoid head) trained with `ContrastiveLoss` on pairs drawn online by
`make_pair_dataset` (fresh pairs every epoch). Digits 7, 8, 9 are never
trained on: the pairs of those "unseen classes" show whether the embedding
generalises, the held-out examples of the other digits whether it fits.
Runs offline on a CPU in about a minute.

    python examples/siamese_digits.py [--epochs 30] [--smoke]

Pair labels: 0 = similar (same digit), 1 = dissimilar.
"""

import argparse

import keras
import numpy as np

from keras_contrastive import datasets, evaluation
from keras_contrastive.data import make_pair_dataset
from keras_contrastive.losses import ContrastiveLoss
from keras_contrastive.models import SiameseModel, build_encoder
from keras_contrastive.reporting import pair_indices


def random_pairs(y, count, rng):
    """About `count` index pairs, half similar, labels 0 = similar."""
    first, second = pair_indices(y, int(rng.integers(2**31)), max_pairs=count)
    return first, second, (y[first] != y[second]).astype("int64")


def pair_report(model, x, y, rng, threshold=None):
    """Verification metrics of `model` on random pairs of (x, y)."""
    first, second, labels = random_pairs(y, 4000, rng)
    distances = model.predict([x[first], x[second]], verbose=0)[:, 0]
    return evaluation.verification_metrics(distances, labels,
                                           threshold=threshold)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--pairs-per-epoch", type=int, default=8192)
    parser.add_argument("--margin", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--plot", default=None,
                        help="save the unseen-class distance histogram here")
    parser.add_argument("--smoke", action="store_true",
                        help="one short epoch, to check the script runs")
    args = parser.parse_args(argv)
    if args.smoke:
        args.epochs, args.pairs_per_epoch = 1, 256
    keras.utils.set_random_seed(args.seed)
    rng = np.random.default_rng(args.seed)

    x, y = datasets.load("digits")  # [1797, 8, 8, 1] in [0, 1]
    (x_seen, y_seen), (x_unseen, y_unseen) = datasets.split_by_class(
        x, y, holdout_classes=[7, 8, 9])
    (x_train, y_train), (x_test, y_test) = datasets.split_examples(
        x_seen, y_seen, fraction=0.2, seed=args.seed)

    encoder = build_encoder(x.shape[1:], embedding_dim=32, normalize=True)
    model = SiameseModel(encoder)  # output: distances [N, 1]
    model.compile(optimizer=keras.optimizers.Adam(1e-3),
                  loss=ContrastiveLoss(margin=args.margin))
    pairs = make_pair_dataset(x_train, y_train, batch_size=128,
                              pairs_per_epoch=args.pairs_per_epoch,
                              seed=args.seed, drop_remainder=True)
    model.fit(pairs, epochs=args.epochs, verbose=2)

    # The threshold is chosen on training pairs, then applied to new pairs.
    threshold = pair_report(model, x_train, y_train, rng)["threshold"]
    results = {}
    for name, (xs, ys) in {"held-out examples": (x_test, y_test),
                           "unseen digits 7-9": (x_unseen, y_unseen)}.items():
        metrics = pair_report(model, xs, ys, rng, threshold=threshold)
        recall = evaluation.retrieval_metrics(model.embed(xs), ys, k=1)
        results[name] = metrics
        print(f"{name}: ROC-AUC {metrics['roc_auc']:.4f}, pair accuracy "
              f"{metrics['accuracy']:.4f} at threshold {threshold:.3f} "
              f"(from training pairs), recall@1 "
              f"{recall['recall_at_1']:.4f}")
    if args.plot:
        from keras_contrastive.visualization import plot_distance_histogram

        first, second, labels = random_pairs(y_unseen, 4000, rng)
        distances = model.predict([x_unseen[first], x_unseen[second]],
                                  verbose=0)[:, 0]
        plot_distance_histogram(distances, labels, threshold=threshold,
                                margin=args.margin, path=args.plot)
    return results


if __name__ == "__main__":
    main()
