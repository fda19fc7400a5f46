"""Siamese verification on MNIST: are two handwritten digits the same?

The encoder is trained with `BatchContrastiveLoss` on class-balanced
batches (every pair of a batch counts, not one pair per example), then
wrapped in a `SiameseModel` that outputs the distance of a pair. The
decision threshold is chosen on validation pairs and applied to pairs of
the test set; the script reports balanced pair accuracy and ROC-AUC.

    python examples/siamese_mnist.py                   # tfds:mnist
    python examples/siamese_mnist.py --data train.npz --test-data test.npz
    python examples/siamese_mnist.py --smoke           # offline, digits

`tfds:mnist` must be downloaded already (this library never downloads);
otherwise the script stops with the loader's message saying how. Pair
labels: 0 = similar (same digit), 1 = dissimilar.
"""

import argparse

import keras
import numpy as np

from keras_contrastive import datasets, evaluation
from keras_contrastive.data import class_balanced_dataset
from keras_contrastive.losses import BatchContrastiveLoss
from keras_contrastive.models import SiameseModel, build_encoder
from keras_contrastive.reporting import pair_indices


def random_pairs(y, count, seed):
    """About `count` index pairs, half similar, labels 0 = similar."""
    first, second = pair_indices(y, seed, max_pairs=count)
    return first, second, (y[first] != y[second]).astype("int64")


def pair_metrics(model, x, y, seed, threshold=None, count=20000):
    first, second, labels = random_pairs(y, count, seed)
    distances = model.predict([x[first], x[second]], batch_size=512,
                              verbose=0)[:, 0]
    return evaluation.verification_metrics(distances, labels,
                                           threshold=threshold)


def load(args):
    """(x_train, y_train), (x_test, y_test) as the options say."""
    if args.smoke:  # offline: the 8x8 digits stand in for MNIST
        x, y = datasets.load("digits")
        return datasets.split_examples(x, y, fraction=0.3, seed=args.seed)
    train = datasets.load(args.data)
    if args.test_data:
        return train, datasets.load(args.test_data)
    if args.data.startswith("tfds:"):
        name = args.data.split(":")[1]
        return train, datasets.load(f"tfds:{name}:test")
    return datasets.split_examples(*train, fraction=0.2, seed=args.seed)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="tfds:mnist",
                        help="tfds:mnist (default) or an .npz with x and y")
    parser.add_argument("--test-data", default=None,
                        help="test set (default: the TFDS test split, or "
                        "20%% of an .npz)")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--steps-per-epoch", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smoke", action="store_true",
                        help="offline, digits, one short epoch")
    args = parser.parse_args(argv)
    if args.smoke:
        args.epochs, args.steps_per_epoch = 1, 3
    keras.utils.set_random_seed(args.seed)
    try:
        (x, y), (x_test, y_test) = load(args)
    except (ValueError, ImportError) as error:  # e.g. TFDS not downloaded
        raise SystemExit(f"error: {error}") from None
    x, y, x_test, y_test = map(np.asarray, (x, y, x_test, y_test))
    # Validation examples of the training data choose the threshold.
    (x_train, y_train), (x_val, y_val) = datasets.split_examples(
        x, y, fraction=0.1, seed=args.seed)

    encoder = build_encoder(
        x.shape[1:], embedding_dim=64, normalize=True,
        rescaling=1 / 255 if x.dtype == np.uint8 else None)
    encoder.compile(optimizer=keras.optimizers.Adam(1e-3),
                    loss=BatchContrastiveLoss(margin=1.0))
    batches = class_balanced_dataset(
        x_train, y_train, classes_per_batch=10, examples_per_class=16,
        seed=args.seed)  # endless P x K batches: give steps_per_epoch
    encoder.fit(batches, epochs=args.epochs,
                steps_per_epoch=args.steps_per_epoch,
                verbose=2 if not args.smoke else 0)

    model = SiameseModel(encoder)  # the distance of a pair, [N, 1]
    validation = pair_metrics(model, x_val, y_val, args.seed)
    threshold = validation["threshold"]
    test = pair_metrics(model, x_test, y_test, args.seed + 1,
                        threshold=threshold)
    print(f"threshold {threshold:.4f} (chosen on {validation['num_pairs']} "
          f"validation pairs)")
    print(f"test pairs: {test['num_pairs']}, balanced accuracy "
          f"{test['balanced_accuracy']:.4f}, accuracy {test['accuracy']:.4f}, "
          f"ROC-AUC {test['roc_auc']:.4f}")
    return test


if __name__ == "__main__":
    main()
