"""Every example runs end to end with --smoke (small data, one short epoch).

examples/multi_worker.py starts worker processes; test_distribute.py runs it
with stronger checks, so it is not run twice here.
"""

import importlib.util
import pathlib

import pytest
from conftest import requires_tensorflow

EXAMPLES = sorted(
    path for path in
    (pathlib.Path(__file__).parent.parent / "examples").glob("*.py")
    if path.stem != "multi_worker"
)


@requires_tensorflow
@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_runs_with_smoke_flag(path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(["--smoke"])
