"""The `keras-contrastive` command: `train` and `evaluate`.

    keras-contrastive train --data digits --out runs/digits
    keras-contrastive evaluate --model runs/digits/model.keras --data digits

Also runs as ``python -m keras_contrastive``. Bad options end with one
clear line on stderr and exit status 2, not a traceback.
"""

import argparse
import json
import os
import sys
from typing import Optional, Sequence

from keras_contrastive.mining import MINERS

LOSSES = ("pair", "batch", "ntxent")
METRICS = ("euclidean", "squared_euclidean", "cosine")
ENCODERS = ("cnn", "mlp")
STRATEGIES = ("auto", "default", "mirrored", "multi_worker", "tpu")


def _positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _positive_float(text):
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def _fraction(text):
    value = float(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1), got {value}")
    return value


def _data_options(parser):
    parser.add_argument(
        "--data", default="digits",
        help="'digits' (scikit-learn's bundled 8x8 digits, offline; the "
        "default), 'tfds:<name>[:<split>]' (an already downloaded TFDS "
        "dataset), a folder with one sub-folder of images per class, or an "
        ".npz file with arrays x and y")
    parser.add_argument("--x-key", default="x",
                        help="the .npz array of examples (e.g. x28)")
    parser.add_argument(
        "--groups-key", default=None,
        help="an .npz array of group ids (e.g. alphabet): unseen classes "
        "are then whole groups")
    parser.add_argument("--overwrite", action="store_true",
                        help="write into a non-empty output folder")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed for splits, pairs and initialisation")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="keras-contrastive",
        description="Train and evaluate contrastive embedding models.")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser(
        "train", help="train an encoder and write model, report and plots",
        description="Train an encoder; hold out whole classes and some "
        "examples of the training classes; write model.keras, "
        "encoder.keras, history.csv, report.json, distance_histogram.png, "
        "embeddings.png (and TensorBoard logs with --tensorboard).")
    _data_options(train)
    train.add_argument("--out", default=None,
                       help="output folder (default: runs/<data name>)")
    train.add_argument(
        "--loss", choices=LOSSES, default="batch",
        help="pair: ContrastiveLoss on online pairs; batch: "
        "BatchContrastiveLoss on class-balanced batches (default); ntxent: "
        "supervised NT-Xent (SupCon) on class-balanced batches")
    train.add_argument("--miner", choices=tuple(MINERS), default="all",
                       help="pairs used by --loss batch (default: all)")
    train.add_argument("--margin", type=_positive_float, default=1.0,
                       help="distance beyond which negatives cost nothing")
    train.add_argument("--positive-margin", type=float, default=0.0,
                       help="distance within which positives cost nothing")
    train.add_argument("--temperature", type=_positive_float, default=0.1,
                       help="temperature of --loss ntxent")
    train.add_argument("--metric", choices=METRICS, default="euclidean",
                       help="distance between embeddings")
    train.add_argument("--encoder", choices=ENCODERS, default="cnn",
                       help="encoder architecture")
    train.add_argument("--embedding-dim", type=_positive_int, default=64)
    train.add_argument("--normalize", action=argparse.BooleanOptionalAction,
                       default=True, help="L2-normalise the embeddings")
    train.add_argument("--augment", action=argparse.BooleanOptionalAction,
                       default=True,
                       help="random shifts and noise on training images")
    train.add_argument("--epochs", type=_positive_int, default=20)
    train.add_argument("--steps-per-epoch", type=_positive_int, default=None,
                       help="default: training examples / batch size")
    train.add_argument("--batch-size", type=_positive_int, default=128)
    train.add_argument("--examples-per-class", type=_positive_int, default=8,
                       help="K of the class-balanced P x K batches")
    train.add_argument("--learning-rate", type=_positive_float, default=1e-3)
    train.add_argument(
        "--holdout-classes", type=int, nargs="+", default=None,
        help="class (or group) ids never trained on, evaluated as unseen")
    train.add_argument(
        "--holdout-fraction", type=_fraction, default=0.3,
        help="or the fraction of classes (or groups) held out at random")
    train.add_argument(
        "--heldout-fraction", type=_fraction, default=0.2,
        help="fraction of each training class's examples kept for testing")
    train.add_argument("--strategy", choices=STRATEGIES, default="auto",
                       help="tf.distribute strategy")
    train.add_argument("--tensorboard", action="store_true",
                       help="also write TensorBoard logs to <out>/logs")
    train.add_argument("--quiet", action="store_true",
                       help="no progress bars")

    evaluate = commands.add_parser(
        "evaluate", help="report the metrics of a trained model",
        description="Evaluate a saved model.keras or encoder.keras; when "
        "the training run's report.json is beside it and names the same "
        "data, the same held-out examples and unseen classes are used.")
    evaluate.add_argument("--model", required=True,
                          help="model.keras or encoder.keras")
    _data_options(evaluate)
    evaluate.add_argument("--out", default=None,
                          help="output folder (default: <model folder>/"
                          "evaluation)")
    return parser


def _check(parser, args):
    if args.command == "train":
        if args.positive_margin < 0 or args.positive_margin >= args.margin:
            parser.error("--positive-margin must be in [0, --margin), got "
                         f"{args.positive_margin}")
        if args.out is None:
            name = os.path.basename(os.path.normpath(args.data))
            args.out = os.path.join("runs", name.replace(":", "_"))
    elif args.out is None:
        args.out = os.path.join(os.path.dirname(args.model) or ".",
                                "evaluation")


def _summary(report) -> str:
    lines = []
    for part in ("heldout_examples", "unseen_classes", "all"):
        if part in report:
            m = report[part]
            lines.append(
                f"{part}: roc_auc {m['roc_auc']:.4f}  eer {m['eer']:.4f}  "
                f"accuracy {m['accuracy']:.4f}  "
                f"recall@1 {m['recall_at_1']:.4f}  "
                f"map@r {m['map_at_r']:.4f}")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _check(parser, args)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from keras_contrastive import trainer

    try:
        if args.command == "train":
            report = trainer.run_training(
                args, verbose=0 if args.quiet else 1)
        else:
            report = trainer.run_evaluation(args)
    except (ValueError, TypeError, ImportError, OSError) as error:
        message = str(error).splitlines()[0] if str(error) else repr(error)
        print(f"keras-contrastive {args.command}: error: {message}",
              file=sys.stderr)
        return 2
    print(_summary(report))
    print(f"wrote {os.path.join(args.out, 'report.json')}")
    if "wall_time_s" in report:
        print(json.dumps({"wall_time_s": report["wall_time_s"]}))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
