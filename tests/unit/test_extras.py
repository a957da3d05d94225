"""A missing optional package is one line naming the extra that installs it, not a traceback."""

import sys

import pytest

from cliplab.cli.main import main
from cliplab.errors import CliplabError
from cliplab.extras import EXTRA_OF, install_hint, require


def test_hints_name_the_extra():
    assert install_hint(ModuleNotFoundError(name="sklearn.linear_model")) == (
        "needs the sklearn package: pip install 'cliplab[eval]'")
    assert install_hint(ModuleNotFoundError(name="torch")) is None  # not optional: a real failure
    assert set(EXTRA_OF.values()) <= {"train", "eval", "index", "serve", "export", "hf"}


def test_require_fails_before_the_work(monkeypatch):
    from cliplab.demo.run import DemoConfig, run_demo

    monkeypatch.setitem(sys.modules, "sklearn", None)  # blocked: `import sklearn` raises ModuleNotFoundError
    want = r"the demo's evaluation needs the sklearn package: pip install 'cliplab\[eval\]'"
    with pytest.raises(CliplabError, match=want):
        require("sklearn", what="the demo's evaluation")
    with pytest.raises(CliplabError, match=want):  # before anything is trained or written
        run_demo(DemoConfig(output="/nonexistent/never-made", steps=1))


def test_the_cli_prints_one_line_for_a_missing_optional_package(monkeypatch, capsys, tmp_path):
    from PIL import Image

    from tests.integration.helpers import tiny_checkpoint

    checkpoint = tiny_checkpoint(tmp_path / "ckpt")
    (tmp_path / "images").mkdir()
    Image.new("RGB", (40, 40), (200, 30, 30)).save(tmp_path / "images" / "a.png")
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # `import pyarrow` now raises ModuleNotFoundError
    code = main(["embed", "--checkpoint", str(checkpoint), "--images", str(tmp_path / "images"),
                 "--output", str(tmp_path / "store")])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err == "error: cliplab embed needs the pyarrow package: pip install 'cliplab[index]'"
