"""Plots of what a contrastive model learned: distances and embeddings.

matplotlib is imported inside the functions (``pip install
"keras-contrastive[viz]"``). Figures are built with matplotlib's
object-oriented API on the Agg canvas, so they work headless, leave
pyplot's global state alone, and still display in Jupyter.
"""

import numbers
from typing import Optional

import numpy as np

from keras_contrastive._validation import check_integer
from keras_contrastive.evaluation import check_pairs

_MAX_LEGEND_CLASSES = 20


def _new_figure(figsize):
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as error:
        raise ImportError(
            "Plotting needs matplotlib: pip install matplotlib "
            '(or "keras-contrastive[viz]").'
        ) from error
    figure = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _save(figure, path):
    if path is not None:
        figure.savefig(path, dpi=100, format="png")


def _check_optional_number(name, value):
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(
            f"`{name}` must be a number or None. Received: {name}={value!r}"
        )
    return float(value)


def plot_distance_histogram(
    distances,
    pair_labels,
    *,
    similar_label: int = 0,
    threshold: Optional[float] = None,
    margin: Optional[float] = None,
    path=None,
    bins: int = 50,
    title: Optional[str] = None,
):
    """Histograms of the distances of similar and of dissimilar pairs.

    A good model puts the similar pairs (blue) near 0 and the dissimilar
    pairs (orange) beyond the margin; their overlap is where a threshold
    makes mistakes. Densities are plotted (each histogram has area 1), so
    unbalanced pair counts stay comparable.

    Args:
        distances: `[N]` or `[N, 1]` pair distances.
        pair_labels: `[N]` or `[N, 1]` labels in {0, 1}. ``0`` = similar
            pair unless ``similar_label=1``.
        similar_label: the label value of a similar pair, 0 or 1.
        threshold: decision threshold to draw (a dashed line), e.g. the
            ``threshold`` of `keras_contrastive.evaluation.
            verification_metrics`.
        margin: the loss's margin to draw (a dotted line).
        path: save the figure as a PNG here (str or path-like).
        bins: number of histogram bins.
        title: figure title.

    Returns:
        The `matplotlib.figure.Figure`.

    Example:
    >>> from keras_contrastive.visualization import plot_distance_histogram
    >>> figure = plot_distance_histogram([0.1, 0.2, 0.9, 1.3], [0, 0, 1, 1],
    ...                                  margin=1.0, path="distances.png")
    """
    distances, similar = check_pairs(distances, pair_labels, similar_label)
    threshold = _check_optional_number("threshold", threshold)
    margin = _check_optional_number("margin", margin)
    bins = check_integer("bins", bins)
    figure = _new_figure((6.4, 4.0))
    axes = figure.add_subplot()
    low, high = (float(distances.min()), float(distances.max())) if len(
        distances
    ) else (0.0, 1.0)
    edges = np.linspace(low, high if high > low else low + 1.0, bins + 1)
    for mask, name, color in (
        (similar, "similar pairs", "tab:blue"),
        (~similar, "dissimilar pairs", "tab:orange"),
    ):
        if mask.any():
            axes.hist(distances[mask], bins=edges, density=True, alpha=0.55,
                      color=color, label=f"{name} ({int(mask.sum())})")
    if threshold is not None:
        axes.axvline(threshold, color="black", linestyle="--",
                     label=f"threshold {threshold:.3g}")
    if margin is not None:
        axes.axvline(margin, color="tab:red", linestyle=":",
                     label=f"margin {margin:.3g}")
    axes.set_xlabel("distance")
    axes.set_ylabel("density")
    axes.set_title(title or "Pair distances")
    axes.legend()
    _save(figure, path)
    return figure


def _class_colormap(num_classes: int):
    """One distinct colour per class up to 20 classes, else a gradient."""
    import matplotlib
    from matplotlib.colors import ListedColormap

    if num_classes > _MAX_LEGEND_CLASSES:
        return matplotlib.colormaps["turbo"]
    name = "tab10" if num_classes <= 10 else "tab20"
    return ListedColormap(matplotlib.colormaps[name].colors[:num_classes])


def _pca_2d(x: np.ndarray) -> np.ndarray:
    centred = x - x.mean(axis=0)
    # Right singular vectors are the principal axes.
    _, _, axes = np.linalg.svd(centred, full_matrices=False)
    projected = centred @ axes[:2].T
    if projected.shape[1] < 2:
        projected = np.pad(projected, ((0, 0), (0, 2 - projected.shape[1])))
    return projected


def _tsne_2d(x: np.ndarray, seed: int) -> np.ndarray:
    try:
        from sklearn.manifold import TSNE
    except ImportError as error:
        raise ImportError(
            'method="tsne" needs scikit-learn: pip install scikit-learn (or '
            '"keras-contrastive[datasets]"). method="pca" needs nothing.'
        ) from error
    perplexity = float(min(30.0, max(1.0, (len(x) - 1) / 3.0)))
    return TSNE(n_components=2, init="pca", perplexity=perplexity,
                random_state=seed).fit_transform(x)


def plot_embeddings(
    embeddings,
    labels,
    *,
    method: str = "pca",
    path=None,
    max_points: Optional[int] = 5000,
    seed: int = 0,
    title: Optional[str] = None,
):
    """Scatter plot of embeddings projected to 2-D, coloured by class.

    Well-trained embeddings form one tight, separate cluster per class,
    also for classes never seen in training.

    * ``"pca"``: the first two principal components (numpy SVD): a linear
      view; distances along the axes are real embedding distances.
    * ``"tsne"``: t-SNE (scikit-learn): keeps neighbourhoods, not global
      distances; cluster sizes and gaps between clusters mean little.

    Args:
        embeddings: `[N, D]` embeddings.
        labels: class labels `[N]`.
        method: ``"pca"`` or ``"tsne"``.
        path: save the figure as a PNG here.
        max_points: plot a random subset of at most this many points
            (None: all); t-SNE is slow on large sets.
        seed: seed of the subset and of t-SNE.
        title: figure title.

    Returns:
        The `matplotlib.figure.Figure`.

    Raises:
        ImportError: ``method="tsne"`` without scikit-learn installed.

    Example:
    >>> import numpy as np
    >>> from keras_contrastive.visualization import plot_embeddings
    >>> x = np.random.normal(size=(100, 16))
    >>> figure = plot_embeddings(x, np.arange(100) % 4, path="emb.png")

    Reference:
        van der Maaten, Hinton. Visualizing Data using t-SNE. JMLR 2008.
    """
    x = np.asarray(embeddings, dtype=np.float64)
    labels = np.asarray(labels)
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if x.ndim != 2 or len(x) < 2:
        raise ValueError(
            "`embeddings` must have shape [N, D] with N >= 2. "
            f"Received: embeddings.shape={x.shape}"
        )
    if labels.ndim != 1 or len(labels) != len(x):
        raise ValueError(
            "`labels` must have shape [N] matching `embeddings`. Received: "
            f"labels.shape={labels.shape}, embeddings.shape={x.shape}"
        )
    if not np.all(np.isfinite(x)):
        raise ValueError("`embeddings` must be finite (no NaN or inf).")
    if method not in ("pca", "tsne"):
        raise ValueError(
            f"`method` must be 'pca' or 'tsne'. Received: method={method!r}"
        )
    if max_points is not None:
        max_points = check_integer("max_points", max_points, minimum=2)
        if len(x) > max_points:
            keep = np.random.default_rng(seed).choice(
                len(x), max_points, replace=False
            )
            x, labels = x[keep], labels[keep]
    points = _pca_2d(x) if method == "pca" else _tsne_2d(x, seed)

    classes, codes = np.unique(labels, return_inverse=True)
    figure = _new_figure((6.4, 5.2))
    axes = figure.add_subplot()
    colormap = _class_colormap(len(classes))
    scatter = axes.scatter(points[:, 0], points[:, 1], c=codes, s=8,
                           cmap=colormap, alpha=0.8,
                           vmin=-0.5, vmax=len(classes) - 0.5)
    if len(classes) <= _MAX_LEGEND_CLASSES:
        handles, _ = scatter.legend_elements(num=list(range(len(classes))))
        axes.legend(handles, [str(c) for c in classes], title="class",
                    loc="center left", bbox_to_anchor=(1.0, 0.5),
                    fontsize="small")
    else:
        figure.colorbar(scatter, ax=axes, label="class index")
    name = "PCA" if method == "pca" else "t-SNE"
    axes.set_xlabel(f"{name} 1")
    axes.set_ylabel(f"{name} 2")
    axes.set_title(title or f"Embeddings ({name}, {len(x)} points)")
    _save(figure, path)
    return figure


__all__ = ["plot_distance_histogram", "plot_embeddings"]
