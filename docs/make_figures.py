"""Make the example figures of docs/evaluation.md from scikit-learn digits.

Trains a small Siamese MLP on digits 0-6 with random pairs (about 10 s on
2 CPU cores), then evaluates on held-out examples of those digits and on
digits 7-9, never seen in training, and writes:

    docs/img/distance_histogram.png   held-out pairs, threshold and margin
    docs/img/distance_histogram_unseen.png   pairs of unseen digits
    docs/img/embeddings_pca.png       PCA of held-out embeddings
    docs/img/embeddings_tsne.png      t-SNE of the same embeddings

and prints the metrics as JSON. Run from the repository root:

    python docs/make_figures.py
"""

import json
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402

from keras_contrastive.evaluation import (  # noqa: E402
    few_shot_accuracy,
    retrieval_metrics,
    verification_metrics,
)
from keras_contrastive.models import SiameseModel, build_encoder  # noqa: E402
from keras_contrastive.visualization import (  # noqa: E402
    plot_distance_histogram,
    plot_embeddings,
)

OUT = Path(__file__).parent / "img"
TRAIN_CLASSES = range(7)
MARGIN = 1.0


def random_pairs(y, n_pairs, rng):
    """Index pairs, half similar (label 0) and half dissimilar (label 1)."""
    by_class = {c: np.flatnonzero(y == c) for c in np.unique(y)}
    classes = np.array(sorted(by_class))
    first = rng.integers(0, len(y), n_pairs)
    similar = rng.random(n_pairs) < 0.5
    shift = rng.integers(1, len(classes), n_pairs)
    position = np.searchsorted(classes, y[first])
    other = classes[(position + shift) % len(classes)]
    partner = np.where(similar, y[first], other)
    second = np.array([rng.choice(by_class[c]) for c in partner])
    return first, second, (~similar).astype("float32")


def main():
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    digits = load_digits()
    x, y = digits.images.astype("float32"), digits.target
    seen = np.isin(y, TRAIN_CLASSES)
    order = rng.permutation(np.flatnonzero(seen))
    train, heldout = order[: len(order) * 4 // 5], order[len(order) * 4 // 5:]
    unseen = np.flatnonzero(~seen)

    model = SiameseModel(
        build_encoder((8, 8), embedding_dim=32, architecture="mlp",
                      rescaling=1 / 16)
    )
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    for _ in range(10):  # fresh pairs every epoch
        a, b, labels = random_pairs(y[train], 4096, rng)
        model.fit([x[train][a], x[train][b]], labels, batch_size=128,
                  verbose=0)

    OUT.mkdir(exist_ok=True)
    report = {}
    for name, index in (("heldout_examples", heldout),
                        ("unseen_classes", unseen)):
        a, b, labels = random_pairs(y[index], 2000, rng)
        distances = model.predict([x[index][a], x[index][b]], verbose=0)
        verification = verification_metrics(distances, labels)
        embeddings = model.embed(x[index])
        report[name] = {
            **verification,
            **retrieval_metrics(embeddings, y[index]),
        }
        suffix = "" if name == "heldout_examples" else "_unseen"
        plot_distance_histogram(
            distances, labels, threshold=verification["threshold"],
            margin=MARGIN, path=OUT / f"distance_histogram{suffix}.png",
            title=f"Pair distances, {name.replace('_', ' ')}",
        )
    report["unseen_classes"]["3_way_1_shot"] = few_shot_accuracy(
        model.embed(x[unseen]), y[unseen], ways=3, episodes=600
    )
    embeddings = model.embed(x[heldout])
    plot_embeddings(embeddings, y[heldout], path=OUT / "embeddings_pca.png",
                    title="Held-out digits 0-6, PCA")
    plot_embeddings(embeddings, y[heldout], method="tsne",
                    path=OUT / "embeddings_tsne.png",
                    title="Held-out digits 0-6, t-SNE")
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
