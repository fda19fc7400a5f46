"""The `keras-contrastive` command: `train` and `evaluate`.

    keras-contrastive train --data digits --out runs/digits
    keras-contrastive evaluate --model runs/digits/model.keras --data digits

Also runs as ``python -m keras_contrastive``. Bad options end with one
clear line on stderr and exit status 2, not a traceback. The options and
outputs are described in docs/cli.md.
"""

import argparse
import json
import os
import sys
from typing import Optional, Sequence

# Names only, so that parsing needs no TensorFlow; tests/test_cli.py checks
# they match the library's (mining.MINERS, the encoders and poolings).
MINERS = ("all", "pair_margin", "batch_hard", "semi_hard")
LOSSES = ("pair", "batch", "ntxent")
METRICS = ("euclidean", "squared_euclidean", "cosine")
ENCODERS = ("cnn", "mlp")
POOLINGS = ("auto", "average", "flatten")
STRATEGIES = ("auto", "default", "mirrored", "multi_worker", "tpu")
SCHEDULES = ("constant", "cosine")


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line: no usage block."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _number(kind, text, check, requirement):
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be {requirement}, got {text!r}") from None
    if not check(value):
        raise argparse.ArgumentTypeError(
            f"must be {requirement}, got {text!r}")
    return value


def _positive_int(text):
    return _number(int, text, lambda v: v >= 1, "an integer >= 1")


def _non_negative_int(text):
    return _number(int, text, lambda v: v >= 0, "an integer >= 0")


def _positive_float(text):
    return _number(float, text, lambda v: v > 0, "a number > 0")


def _non_negative_float(text):
    return _number(float, text, lambda v: v >= 0, "a number >= 0")


def _fraction(text):
    return _number(float, text, lambda v: 0 < v < 1, "a number in (0, 1)")


def _holdout_fraction(text):
    return _number(float, text, lambda v: 0 <= v < 1, "a number in [0, 1)")


def _data_options(parser):
    parser.add_argument(
        "--data", default="digits",
        help="'digits' (scikit-learn's bundled 8x8 digits, offline; the "
        "default), 'tfds:<name>[:<split>]' (an already downloaded TFDS "
        "dataset), a folder with one sub-folder of images per class, or an "
        ".npz file with arrays x and y")
    parser.add_argument("--x-key", default="x",
                        help="the .npz array of examples (default x; e.g. "
                        "x28 for Omniglot)")
    parser.add_argument(
        "--groups-key", default=None,
        help="an .npz array of group ids (e.g. alphabet): unseen classes "
        "are then whole groups")
    parser.add_argument("--overwrite", action="store_true",
                        help="write into a non-empty output folder")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed for splits, pairs, initialisation and "
                        "few-shot episodes (default 0)")
    parser.add_argument(
        "--few-shot-ways", type=_non_negative_int, default=20,
        help="N of the N-way one-shot accuracy on the unseen classes "
        "(default 20; lowered to the number of unseen classes; 0: skip)")
    parser.add_argument("--few-shot-shots", type=_positive_int, default=1,
                        help="support examples per class (default 1)")
    parser.add_argument("--few-shot-episodes", type=_positive_int,
                        default=1000, help="episodes (default 1000)")


def _train_options(train):
    train.add_argument("--out", default=None,
                       help="output folder (default: runs/<data name>)")
    train.add_argument(
        "--loss", choices=LOSSES, default="batch",
        help="pair: ContrastiveLoss on online pairs; batch: "
        "BatchContrastiveLoss on class-balanced batches (default); ntxent: "
        "supervised NT-Xent (SupCon) through a projection head")
    train.add_argument("--miner", choices=MINERS, default="all",
                       help="pairs used by --loss batch (default all)")
    train.add_argument("--margin", type=_positive_float, default=1.4,
                       help="distance beyond which negatives cost nothing "
                       "(default 1.4)")
    train.add_argument("--positive-margin", type=_non_negative_float,
                       default=0.0, help="distance within which positives "
                       "cost nothing (default 0.0)")
    train.add_argument("--temperature", type=_positive_float, default=0.1,
                       help="temperature of --loss ntxent (default 0.1)")
    train.add_argument(
        "--instance-weight", type=_non_negative_float, default=1.0,
        help="--loss batch or ntxent: weight of an extra NT-Xent term "
        "between two augmented views of each example (keeps what tells "
        "examples apart, which helps on unseen classes; doubles the work "
        "per step; default 1.0; 0: off)")
    train.add_argument("--instance-temperature", type=_positive_float,
                       default=0.235, help="temperature of that term "
                       "(default 0.235)")
    train.add_argument(
        "--instance-head", action=argparse.BooleanOptionalAction,
        default=False, help="apply that term through a projection head "
        "(SimCLR's), not to the embedding itself (default off)")
    train.add_argument("--metric", choices=METRICS, default="euclidean",
                       help="distance between embeddings (default euclidean)")
    train.add_argument("--encoder", choices=ENCODERS, default="cnn",
                       help="encoder architecture (default cnn)")
    train.add_argument("--base-filters", type=_positive_int, default=32,
                       help="channels of the first CNN block, doubling per "
                       "stage up to 4x (default 32)")
    train.add_argument(
        "--pooling", choices=POOLINGS, default="auto",
        help="how the CNN's last feature map becomes a vector: average, "
        "flatten, or auto (default: flatten a map of at most 4x4, as 8x8 "
        "digits give; average a larger one)")
    train.add_argument("--embedding-dim", type=_positive_int, default=128,
                       help="size of the embedding (default 128)")
    train.add_argument("--normalize", action=argparse.BooleanOptionalAction,
                       default=True, help="L2-normalise the embeddings")
    train.add_argument("--augment", action=argparse.BooleanOptionalAction,
                       default=True, help="random rotation, zoom, shifts "
                       "and noise on training images")
    train.add_argument("--augment-strength", type=_non_negative_float,
                       default=1.0, help="scales the augmentation: 1.0 is "
                       "15 degrees, 10%% zoom and shift (default 1.0)")
    train.add_argument("--epochs", type=_positive_int, default=200,
                       help="passes of --steps-per-epoch steps (default 200)")
    train.add_argument("--steps-per-epoch", type=_positive_int, default=None,
                       help="default: training examples / batch size")
    train.add_argument("--batch-size", type=_positive_int, default=128,
                       help="examples (or pairs) per step (default 128)")
    train.add_argument("--examples-per-class", type=_positive_int, default=8,
                       help="K of the class-balanced P x K batches "
                       "(default 8)")
    train.add_argument("--learning-rate", type=_positive_float, default=1e-3,
                       help="Adam learning rate (default 0.001)")
    train.add_argument("--lr-schedule", choices=SCHEDULES,
                       default="cosine", help="constant, or cosine decay "
                       "to 0 over the run (default cosine)")
    train.add_argument(
        "--holdout-classes", type=int, nargs="+", default=None,
        help="class (or group) ids never trained on, evaluated as unseen")
    train.add_argument(
        "--holdout-fraction", type=_holdout_fraction, default=0.3,
        help="or the fraction of classes (or groups) held out, chosen by "
        "--seed (default 0.3; 0: none)")
    train.add_argument(
        "--heldout-fraction", type=_fraction, default=0.2,
        help="fraction of each training class's examples kept for testing "
        "(default 0.2)")
    train.add_argument("--strategy", choices=STRATEGIES, default="auto",
                       help="tf.distribute strategy (default auto: TPU, "
                       "several GPUs, TF_CONFIG workers, or one device)")
    train.add_argument(
        "--deterministic", action="store_true",
        help="bit-identical repeat runs with the same --seed (TensorFlow's "
        "op determinism, for the whole process); can be slower, and a "
        "GPU op without a deterministic kernel then fails")
    train.add_argument("--tensorboard", action="store_true",
                       help="also write TensorBoard logs to <out>/logs")
    train.add_argument("--quiet", action="store_true",
                       help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `keras-contrastive` (train and evaluate)."""
    parser = _Parser(
        prog="keras-contrastive",
        description="Train and evaluate contrastive embedding models.")
    commands = parser.add_subparsers(dest="command", required=True,
                                     metavar="{train,evaluate}")
    train = commands.add_parser(
        "train", help="train an encoder and write model, report and plots",
        description="Train an encoder; hold out whole classes and some "
        "examples of the training classes; write model.keras, "
        "encoder.keras, history.csv, report.json, distance_histogram.png, "
        "embeddings.png (and TensorBoard logs with --tensorboard).")
    _data_options(train)
    _train_options(train)
    evaluate = commands.add_parser(
        "evaluate", help="report the metrics of a trained model",
        description="Evaluate a saved model.keras or encoder.keras; when "
        "the training run's report.json is beside it and names the same "
        "data, the same held-out examples and unseen classes are used; "
        "on other data, its validation threshold is applied.")
    evaluate.add_argument("--model", required=True,
                          help="model.keras or encoder.keras")
    _data_options(evaluate)
    evaluate.add_argument("--out", default=None,
                          help="output folder (default: <model folder>/"
                          "evaluation)")
    return parser


def _check(parser, args):
    """Checks that span options; fills in the default output folder."""
    if args.command == "train":
        if args.positive_margin >= args.margin:
            parser.error("argument --positive-margin: must be below "
                         f"--margin ({args.margin}), got "
                         f"{args.positive_margin}")
        if args.out is None:
            name = os.path.basename(os.path.normpath(args.data))
            name = os.path.splitext(name)[0] or "data"
            args.out = os.path.join("runs", name.replace(":", "_"))
    elif args.out is None:
        args.out = os.path.join(os.path.dirname(args.model) or ".",
                                "evaluation")


def summary(report: dict) -> str:
    """A few lines of a report: metrics per part, few-shot accuracy."""
    lines = []
    for part in ("heldout_examples", "unseen_classes", "all"):
        if part not in report:
            continue
        m = report[part]
        line = (f"{part}: roc_auc {m['roc_auc']:.4f}  eer {m['eer']:.4f}  "
                f"recall@1 {m['recall_at_1']:.4f}  "
                f"map@r {m['map_at_r']:.4f}")
        fixed = m.get("at_validation_threshold")
        if fixed:
            line += (f"  balanced_accuracy@validation_threshold "
                     f"{fixed['balanced_accuracy']:.4f}")
        else:
            line += f"  balanced_accuracy {m['balanced_accuracy']:.4f}"
        if "few_shot" in m:
            shot = m["few_shot"]
            line += (f"  {shot['ways']}-way {shot['shots']}-shot "
                     f"{shot['accuracy']:.4f}")
        lines.append(line)
    return "\n".join(lines)


def _quiet_tensorflow():
    # The package sets TF_CPP_MIN_LOG_LEVEL=1 unless the user chose; a
    # command line also hides TensorFlow's start-up warnings.
    if os.environ.get("TF_CPP_MIN_LOG_LEVEL") == "1":
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
    import warnings

    warnings.filterwarnings("ignore", message=".*shuffle=True.*")


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line; returns the exit status (0, or 2 on errors)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as stop:  # --help, or a bad option (already printed)
        return int(stop.code or 0)
    try:
        _check(parser, args)
    except SystemExit as stop:
        return int(stop.code or 0)
    _quiet_tensorflow()
    try:
        from keras_contrastive import trainer

        if args.command == "train":
            report = trainer.run_training(
                args, verbose=0 if args.quiet else 1)
        else:
            report = trainer.run_evaluation(args)
    except (ValueError, TypeError, ImportError, OSError) as error:
        lines = str(error).strip().splitlines()
        message = lines[0] if lines else type(error).__name__
        print(f"keras-contrastive {args.command}: error: {message}",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"keras-contrastive {args.command}: interrupted",
              file=sys.stderr)
        return 130
    print(summary(report))
    print(f"wrote {os.path.join(args.out, 'report.json')}")
    if "wall_time_s" in report:
        print(json.dumps({"wall_time_s": report["wall_time_s"]}))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
