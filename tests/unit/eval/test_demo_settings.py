"""``cliplab demo`` replaces its last run only once every setting is known to be good."""

import pytest
import torch

from cliplab.demo.run import DemoConfig, run_demo
from cliplab.errors import CliplabError


@pytest.mark.parametrize(("settings", "message"), [
    ({"model": "ViT-Tiny-32px-CBOWW"}, "ViT-Tiny-32px-CBOWW"),
    ({"precision": "fp8"}, "precision"),
    ({"precision": "fp16"}, "fp16 needs CUDA"),
])
def test_a_bad_setting_keeps_the_last_run(tmp_path, settings, message):
    if settings.get("precision") == "fp16" and torch.cuda.is_available():
        pytest.skip("fp16 is a good setting here")
    last = tmp_path / "demo" / "run" / "log.jsonl"
    last.parent.mkdir(parents=True)
    last.write_text("the last run\n")
    with pytest.raises(CliplabError, match=message):
        run_demo(DemoConfig(output=str(tmp_path / "demo"), **settings), progress=False)
    assert last.read_text() == "the last run\n"
