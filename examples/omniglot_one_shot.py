"""20-way one-shot Omniglot on alphabets never trained on (Koch et al. 2015).

The encoder learns from characters of some alphabets with
`BatchContrastiveLoss` on class-balanced batches of augmented images; the
test draws 20 characters of other alphabets, one example of each as the
support set, and classifies a new drawing by its nearest support
(`evaluation.few_shot_accuracy`).

    python examples/omniglot_one_shot.py        # tfds:omniglot, official
        # split: train on the background set, test on the evaluation set
    python examples/omniglot_one_shot.py --data omniglot_background.npz \\
        --x-key x28 --groups-key alphabet       # hold out 5 alphabets
    python examples/omniglot_one_shot.py --smoke  # offline, synthetic

`tfds:omniglot` must be downloaded already (this library never downloads).
"""

import argparse

import keras
import numpy as np

from keras_contrastive import datasets, evaluation
from keras_contrastive.data import class_balanced_dataset
from keras_contrastive.losses import BatchContrastiveLoss
from keras_contrastive.models import build_encoder
from keras_contrastive.trainer import augmenter


def to_28x28_grey(x):
    """TFDS Omniglot images [N, 105, 105, 3] -> [N, 28, 28] uint8."""
    import tensorflow as tf

    grey = tf.image.rgb_to_grayscale(x)
    small = tf.image.resize(grey, (28, 28), method="area")
    return np.asarray(tf.cast(tf.round(small), "uint8"))[..., 0]


def synthetic(seed):
    """30 fake characters in 6 alphabets, 5 noisy drawings of each."""
    rng = np.random.default_rng(seed)
    shapes = rng.random((30, 28, 28)) < 0.15
    y = np.repeat(np.arange(30), 5)
    flips = rng.random((len(y), 28, 28)) < 0.03
    x = np.where(shapes[y] ^ flips, 0, 255).astype("uint8")
    return x, y, y // 5


def load(args):
    """(x, y) to train on and (x, y) of unseen alphabets to test on."""
    if args.smoke:
        x, y, groups = synthetic(args.seed)
    elif args.data.startswith("tfds:"):
        train = datasets.load(args.data, split="train")
        test = datasets.load(args.data, split="test")
        return ((to_28x28_grey(train.x), train.y),
                (to_28x28_grey(test.x), test.y))
    else:
        data = datasets.load(args.data, x_key=args.x_key,
                             groups_key=args.groups_key)
        x, y, groups = data.x, data.y, data.groups
    return datasets.split_by_class(x, y, groups=groups, seed=args.seed,
                                   holdout_fraction=args.holdout_fraction)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="tfds:omniglot",
                        help="tfds:omniglot (default) or an .npz")
    parser.add_argument("--x-key", default="x28")
    parser.add_argument("--groups-key", default="alphabet")
    parser.add_argument("--holdout-fraction", type=float, default=5 / 30,
                        help="alphabets held out of an .npz (default 5/30)")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--steps-per-epoch", type=int, default=100)
    parser.add_argument("--ways", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smoke", action="store_true",
                        help="offline synthetic data, one short epoch")
    args = parser.parse_args(argv)
    if args.smoke:
        args.epochs, args.steps_per_epoch, args.ways = 1, 2, 5
    keras.utils.set_random_seed(args.seed)
    try:
        (x_train, y_train), (x_test, y_test) = load(args)
    except (ValueError, ImportError) as error:  # e.g. TFDS not downloaded
        raise SystemExit(f"error: {error}") from None
    print(f"training on {len(np.unique(y_train))} characters, testing on "
          f"{len(np.unique(y_test))} characters of other alphabets")

    # The scaling is part of the model: it takes the raw uint8 drawings.
    encoder = build_encoder(x_train.shape[1:], embedding_dim=64,
                            normalize=True, rescaling=1 / 255,
                            base_filters=64)
    encoder.compile(optimizer=keras.optimizers.Adam(1e-3),
                    loss=BatchContrastiveLoss(margin=1.0))
    # Omniglot has 20 drawings per character: many characters per batch,
    # few drawings each.
    _, labels = np.unique(y_train, return_inverse=True)
    augment = augmenter(x_train.shape, args.seed, value_range=255.0)
    batches = class_balanced_dataset(
        x_train, labels, classes_per_batch=min(32, labels.max() + 1),
        examples_per_class=4, seed=args.seed
    ).map(lambda images, ids: (augment(images), ids))
    encoder.fit(batches, epochs=args.epochs,
                steps_per_epoch=args.steps_per_epoch,
                verbose=2 if not args.smoke else 0)

    embeddings = encoder.predict(x_test, batch_size=512, verbose=0)
    result = evaluation.few_shot_accuracy(
        embeddings, y_test, ways=args.ways, shots=1,
        episodes=100 if args.smoke else 1000, seed=args.seed)
    print(f"{result['ways']}-way one-shot accuracy on unseen alphabets: "
          f"{result['accuracy']:.4f} +- {result['ci95']:.4f}")
    return result


if __name__ == "__main__":
    main()
