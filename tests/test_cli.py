"""The `keras-contrastive` command end to end, in-process, on tiny runs.

One short training run on digits (1 epoch of 2 steps) is shared by the
tests of its outputs, of `evaluate`, and of the errors that need a model.
Each bad option must end with exit status 2 and one line on stderr.
"""

import json
import os

import keras
import numpy as np
import pytest
from conftest import requires_tensorflow

from keras_contrastive import cli

pytestmark = requires_tensorflow

FAST = ["--epochs", "1", "--steps-per-epoch", "2", "--batch-size", "32",
        "--few-shot-episodes", "20", "--quiet"]
OUTPUTS = ("model.keras", "encoder.keras", "history.csv", "report.json",
           "distance_histogram.png", "embeddings.png")
PART_KEYS = ("roc_auc", "eer", "threshold", "accuracy", "balanced_accuracy",
             "recall_at_1", "precision_at_1", "r_precision", "map_at_r",
             "num_examples", "num_classes")


def run(argv, capsys):
    """`cli.main(argv)`: (status, stdout, stderr lines)."""
    status = cli.main(argv)
    captured = capsys.readouterr()
    return status, captured.out, captured.err.strip().splitlines()


def has_tensorboard():
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("cli") / "digits")
    logs = ["--tensorboard"] if has_tensorboard() else []
    status = cli.main(["train", "--out", out, *logs, *FAST])
    assert status == 0
    with open(os.path.join(out, "report.json")) as handle:
        return out, json.load(handle)


def test_train_writes_every_output(digits_run):
    out, _ = digits_run
    for name in OUTPUTS:
        assert os.path.getsize(os.path.join(out, name)) > 0, name
    if has_tensorboard():
        assert os.listdir(os.path.join(out, "logs"))  # --tensorboard
    with open(os.path.join(out, "distance_histogram.png"), "rb") as handle:
        assert handle.read(8) == b"\x89PNG\r\n\x1a\n"


def test_train_report_keys(digits_run):
    _, report = digits_run
    for part in ("heldout_examples", "unseen_classes"):
        for key in PART_KEYS:
            assert key in report[part], (part, key)
    unseen = report["unseen_classes"]
    assert unseen["num_classes"] == 3  # 30% of the 10 digits
    assert set(unseen["at_validation_threshold"]) >= {"balanced_accuracy"}
    assert unseen["few_shot"]["ways"] == 3  # 20 lowered to 3 classes
    assert report["validation_threshold"] > 0
    assert unseen["at_validation_threshold"]["threshold"] == pytest.approx(
        report["validation_threshold"])
    assert set(report["data"]["unseen_classes"]).isdisjoint(
        report["data"]["train_classes"])
    assert report["arguments"]["epochs"] == 1
    assert report["wall_time_s"] >= report["train_time_s"] >= 0
    assert np.isfinite(report["final_loss"])


def test_saved_models_load_and_agree(digits_run):
    from keras_contrastive.datasets import load
    from keras_contrastive.models import SiameseModel

    out, _ = digits_run
    model = keras.saving.load_model(os.path.join(out, "model.keras"))
    encoder = keras.saving.load_model(os.path.join(out, "encoder.keras"))
    assert isinstance(model, SiameseModel)
    # --pooling auto: the 4x4 map of 8x8 digits is flattened.
    assert isinstance(encoder.get_layer("pool"), keras.layers.Flatten)
    x = load("digits").x[:16]
    np.testing.assert_allclose(model.embed(x), encoder.predict(x, verbose=0),
                               rtol=1e-5, atol=1e-6)


def test_evaluate_reuses_the_split(digits_run, capsys):
    out, trained = digits_run
    status, stdout, _ = run(["evaluate", "--model",
                             os.path.join(out, "model.keras"),
                             "--few-shot-episodes", "20"], capsys)
    assert status == 0 and "unseen_classes: roc_auc" in stdout
    with open(os.path.join(out, "evaluation", "report.json")) as handle:
        report = json.load(handle)
    assert report["split_from"].endswith("report.json")
    for part in ("heldout_examples", "unseen_classes"):
        assert report[part]["num_examples"] == trained[part]["num_examples"]
        assert report[part]["roc_auc"] == pytest.approx(
            trained[part]["roc_auc"], abs=1e-4)


def test_npz_uint8_with_groups(tmp_path, capsys):
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(12), 6)
    x = rng.integers(0, 256, size=(len(y), 12, 12), dtype=np.uint8)
    path = str(tmp_path / "tiny.npz")
    np.savez(path, pixels=x, y=y, alphabet=y // 3)
    out = str(tmp_path / "run")
    status, _, err = run(["train", "--data", path, "--x-key", "pixels",
                          "--groups-key", "alphabet", "--holdout-fraction",
                          "0.25", "--out", out, "--loss", "pair",
                          "--pooling", "flatten", *FAST],
                         capsys)
    assert status == 0, err
    with open(os.path.join(out, "report.json")) as handle:
        report = json.load(handle)
    assert report["unseen_classes"]["num_classes"] == 3  # one whole group
    encoder = keras.saving.load_model(os.path.join(out, "encoder.keras"))
    assert encoder.get_layer("rescaling").scale == pytest.approx(1 / 255)
    # 12x12 ends in a 6x6 map, which auto would average; flatten asked.
    assert isinstance(encoder.get_layer("pool"), keras.layers.Flatten)
    assert encoder.predict(x[:4], verbose=0).shape == (4, 128)


def test_help_documents_every_option(capsys):
    parser = cli.build_parser()
    commands = parser._subparsers._group_actions[0].choices
    for name, sub in commands.items():
        status, stdout, _ = run([name, "--help"], capsys)
        assert status == 0
        for action in sub._actions:
            for option in action.option_strings:
                assert option in stdout, (name, option)
            if action.option_strings and action.dest != "help":
                assert action.help, (name, action.dest)


def test_balanced_threshold():
    from keras_contrastive.reporting import balanced_threshold

    # 0 = similar: the best balanced cut is between 0.2 and 0.3, although
    # most pairs are dissimilar.
    distances = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]
    assert balanced_threshold(distances, [0, 0, 1, 1, 1, 1, 1, 1]) == (
        pytest.approx(0.25))


def test_miner_names_match_the_library():
    from keras_contrastive.mining import MINERS

    assert tuple(cli.MINERS) == tuple(MINERS)


def test_encoder_and_pooling_names_match_the_library():
    from keras_contrastive._encoders import ARCHITECTURES, POOLINGS

    assert tuple(cli.ENCODERS) == ARCHITECTURES
    assert tuple(cli.POOLINGS) == POOLINGS


@pytest.mark.parametrize("argv", [
    ["train", "--loss", "nope"],
    ["train", "--miner", "nope"],
    ["train", "--encoder", "resnet"],
    ["train", "--pooling", "max"],
    ["train", "--epochs", "0"],
    ["train", "--margin", "abc"],
    ["train", "--margin", "0.5", "--positive-margin", "0.5"],
    ["frobnicate"],
], ids=["loss", "miner", "encoder", "pooling", "epochs", "margin",
        "positive_margin", "command"])
def test_bad_option_is_one_line(argv, capsys):
    status, _, err = run(argv, capsys)
    assert status == 2
    assert len(err) == 1 and "error:" in err[0], err


def test_bad_input_is_one_line(digits_run, tmp_path, capsys):
    out, _ = digits_run
    model = os.path.join(out, "model.keras")
    garbage = tmp_path / "garbage.keras"
    garbage.write_bytes(b"not a zip file")
    wrong = str(tmp_path / "wrong.npz")
    np.savez(wrong, x=np.zeros((20, 28, 28), "uint8"),
             y=np.arange(20) % 2)
    full = tmp_path / "full"
    full.mkdir()
    (full / "something.txt").write_text("keep me")
    cases = {
        "missing model": ["evaluate", "--model", str(tmp_path / "no.keras")],
        "unreadable model": ["evaluate", "--model", str(garbage)],
        "shape mismatch": ["evaluate", "--model", model, "--data", wrong,
                           "--out", str(tmp_path / "eval")],
        "non-empty out": ["train", "--out", str(full), *FAST],
        "one class left": ["train", "--out", str(tmp_path / "one"),
                           "--holdout-classes", *map(str, range(9)), *FAST],
        "no tensorboard": (["train", "--out", str(tmp_path / "tb"),
                            "--tensorboard", *FAST]
                           if not has_tensorboard() else ["train", "--x"]),
        "unknown data": ["train", "--data", str(tmp_path / "none.npz"),
                         "--out", str(tmp_path / "none"), *FAST],
    }
    for case, argv in cases.items():
        status, _, err = run(argv, capsys)
        assert status == 2, case
        assert len(err) == 1 and "error:" in err[0], (case, err)
    assert (full / "something.txt").read_text() == "keep me"
    assert not (tmp_path / "one").exists()  # nothing created on failure


def test_deterministic_runs_repeat_exactly(tmp_path):
    # In subprocesses: op determinism is switched on for a whole process.
    # Without --deterministic, such runs end with different losses (the
    # augmentation's random draws race in parallel tf.data maps).
    import subprocess
    import sys

    def history(name):
        out = str(tmp_path / name)
        subprocess.run(
            [sys.executable, "-m", "keras_contrastive", "train", "--out", out,
             "--epochs", "2", "--few-shot-episodes", "20", "--quiet",
             "--deterministic"],
            check=True, capture_output=True, timeout=240)
        with open(os.path.join(out, "history.csv")) as handle:
            return handle.read()

    first = history("first")
    assert len(first.strip().splitlines()) == 3  # header and 2 epochs
    assert history("second") == first
