"""SimCLR on the 8x8 digits: NT-Xent on augmented views, then a linear probe.

No labels in pre-training: `augmented_views` turns each batch into two
randomly shifted, rotated and noised copies of every image, labelled with
a sample id, and `NTXentLoss` pulls the two copies of an image together and
pushes every other image away, through a `ProjectionHead` (SimCLR). Then
the encoder is frozen and a logistic regression (the "linear probe") is
fitted on its embeddings of a training split and scored on a test split,
next to the same probe on raw pixels. Runs offline on a CPU.

    python examples/simclr_digits.py [--epochs 60] [--smoke]
"""

import argparse

import keras
import tensorflow as tf
from sklearn.linear_model import LogisticRegression

from keras_contrastive import datasets
from keras_contrastive.data import augmented_views
from keras_contrastive.layers import ProjectionHead
from keras_contrastive.losses import NTXentLoss
from keras_contrastive.models import build_encoder


def augment_layer(seed):
    """Random views of [B, 8, 8, 1] images in [0, 1]."""
    return keras.Sequential([
        keras.layers.RandomRotation(0.05, fill_mode="constant", seed=seed),
        keras.layers.RandomZoom(0.15, fill_mode="constant", seed=seed + 1),
        keras.layers.RandomTranslation(0.15, 0.15, fill_mode="constant",
                                       seed=seed + 2),
        keras.layers.GaussianNoise(0.05, seed=seed + 3),
    ])


def linear_probe(train_features, y_train, test_features, y_test):
    """Test accuracy of a logistic regression on fixed features."""
    mean = train_features.mean(0)
    scale = train_features.std(0) + 1e-6
    probe = LogisticRegression(max_iter=2000)
    probe.fit((train_features - mean) / scale, y_train)
    return float(probe.score((test_features - mean) / scale, y_test))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=256,
                        help="images per batch (twice as many views)")
    parser.add_argument("--temperature", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smoke", action="store_true",
                        help="one short epoch, to check the script runs")
    args = parser.parse_args(argv)
    if args.smoke:
        args.epochs, args.batch_size = 1, 64
    keras.utils.set_random_seed(args.seed)

    x, y = datasets.load("digits")  # [1797, 8, 8, 1] in [0, 1]
    (x_train, y_train), (x_test, y_test) = datasets.split_examples(
        x, y, fraction=0.3, seed=args.seed)

    images = (tf.data.Dataset.from_tensor_slices(x_train)
              .shuffle(len(x_train), seed=args.seed)
              .batch(args.batch_size, drop_remainder=True))
    views = augmented_views(images, augment_layer(args.seed))  # (x, ids)

    encoder = build_encoder(x.shape[1:], embedding_dim=64)
    model = keras.Sequential([
        encoder, ProjectionHead(64, hidden_units=(128,), name="projection")])
    model.compile(optimizer=keras.optimizers.Adam(1e-3),
                  loss=NTXentLoss(temperature=args.temperature))
    model.fit(views, epochs=args.epochs,
              verbose=2 if not args.smoke else 0)

    # The probe reads the encoder, not the projection head (as SimCLR).
    embed = encoder.predict
    ours = linear_probe(embed(x_train, verbose=0), y_train,
                        embed(x_test, verbose=0), y_test)
    pixels = linear_probe(x_train.reshape(len(x_train), -1), y_train,
                          x_test.reshape(len(x_test), -1), y_test)
    untrained = build_encoder(x.shape[1:], embedding_dim=64).predict
    random = linear_probe(untrained(x_train, verbose=0), y_train,
                          untrained(x_test, verbose=0), y_test)
    print(f"linear probe accuracy on {len(y_test)} test digits: "
          f"SimCLR embeddings {ours:.4f}, raw pixels {pixels:.4f}, "
          f"untrained encoder {random:.4f}")
    return {"simclr": ours, "pixels": pixels, "untrained": random}


if __name__ == "__main__":
    main()
