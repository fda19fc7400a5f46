"""The package's import contract: clear errors without TensorFlow."""

import os
import subprocess
import sys

import pytest

import keras_contrastive

HIDE_TENSORFLOW = "import sys; sys.modules['tensorflow'] = None; "


def run_python(code, backend):
    env = dict(os.environ, KERAS_BACKEND=backend)
    return subprocess.run(
        [sys.executable, "-c", HIDE_TENSORFLOW + code],
        capture_output=True, text=True, env=env, timeout=120,
    )


def test_version_and_public_names():
    assert keras_contrastive.__version__
    for name in keras_contrastive.__all__:
        assert hasattr(keras_contrastive, name)


def test_without_tensorflow_the_import_error_names_the_extra():
    result = run_python("import keras_contrastive", "tensorflow")
    assert result.returncode != 0
    assert "keras-contrastive[cpu]" in result.stderr


def test_without_tensorflow_ops_parts_work_under_jax():
    pytest.importorskip("jax")
    result = run_python(
        "import keras_contrastive as kc; "
        "print(float(kc.contrastive_loss([0], [0.5])[0])); "
        "import keras_contrastive.training",
        "jax",
    )
    assert "0.25" in result.stdout
    assert "keras-contrastive[cpu]" in result.stderr
