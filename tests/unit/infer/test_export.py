import json

import numpy as np
import pytest
import torch

from cliplab.checkpoint import save_checkpoint
from cliplab.cli.main import main
from cliplab.config import CLIPConfig, load_arch
from cliplab.model.build import create_model

ort = pytest.importorskip("onnxruntime")


@pytest.mark.parametrize("arch", ["ViT-Tiny-32px", "RN-Tiny-64px"])
def test_onnx_matches_pytorch_with_dynamic_batch(tmp_path, arch):
    torch.manual_seed(0)
    cfg = CLIPConfig.for_model(load_arch(arch))
    model = create_model(cfg.model).eval()
    save_checkpoint(model, cfg, tmp_path / "ckpt")
    assert main(["export", "--checkpoint", str(tmp_path / "ckpt"), "--output", str(tmp_path / "onnx")]) == 0

    onnx = tmp_path / "onnx"
    s, L = cfg.model.vision.image_size, cfg.model.text.context_length
    for n in (1, 5):  # a batch size other than the one used for tracing
        pixels = torch.randn(n, 3, s, s)
        ids = torch.zeros(n, L, dtype=torch.long)
        for i in range(n):
            ids[i, 0] = 49406
            ids[i, 1 : 2 + i] = torch.randint(1, 49000, (1 + i,))
            ids[i, 2 + i] = 49407
        with torch.no_grad():
            ref_img, ref_txt = model.encode_image(pixels).numpy(), model.encode_text(ids).numpy()
        img = ort.InferenceSession(str(onnx / "image_encoder.onnx")).run(None, {"pixel_values": pixels.numpy()})
        txt = ort.InferenceSession(str(onnx / "text_encoder.onnx")).run(None, {"input_ids": ids.numpy()})
        assert np.abs(img[0] - ref_img).max() <= 1e-4
        assert np.abs(txt[0] - ref_txt).max() <= 1e-4
        short = ids[:, : 3 + n].contiguous()  # (n, 3 + n): cut after the batch's last end-of-text token
        txt = ort.InferenceSession(str(onnx / "text_encoder.onnx")).run(None, {"input_ids": short.numpy()})
        assert np.abs(txt[0] - ref_txt).max() <= 1e-4
    meta = json.loads((tmp_path / "onnx" / "config.json").read_text())
    assert meta["preprocess"]["image_size"] == s
    assert meta["logit_scale"] == pytest.approx(1 / 0.07, rel=1e-5)
    assert meta["logit_bias"] is None  # a CLIP-trained model; a SigLIP one stores its bias here


def test_onnx_export_records_the_inference_scale_and_leaves_the_model_alone(tmp_path):
    """A scale above the training cap (HF's logit_scale_init_value 5.5 gives 244.7) is recorded as the model
    uses it at inference; the caller's model keeps its mode and dtype."""
    from cliplab.infer.export import export_onnx

    cfg = CLIPConfig.for_model(load_arch("ViT-Tiny-32px"))
    model = create_model(cfg.model).to(torch.bfloat16).train()
    with torch.no_grad():
        model.logit_scale.fill_(5.5)
    export_onnx(model, cfg, tmp_path / "onnx")
    meta = json.loads((tmp_path / "onnx" / "config.json").read_text())
    assert meta["logit_scale"] == pytest.approx(float(torch.tensor(5.5, dtype=torch.bfloat16).float().exp()))
    assert model.training and model.logit_scale.dtype == torch.bfloat16


def test_an_export_cut_short_leaves_the_previous_export_whole(tmp_path, monkeypatch):
    from cliplab.infer import export as export_module

    torch.manual_seed(0)
    cfg = CLIPConfig.for_model(load_arch("ViT-Tiny-32px"))
    out = tmp_path / "onnx"
    export_module.export_onnx(create_model(cfg.model).eval(), cfg, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    real = export_module._export

    def dies_on_the_text_encoder(module, example, path, *args):
        if path.name == "text_encoder.onnx":
            raise KeyboardInterrupt  # stands for a kill after the image encoder was written
        return real(module, example, path, *args)

    monkeypatch.setattr(export_module, "_export", dies_on_the_text_encoder)
    with pytest.raises(KeyboardInterrupt):
        export_module.export_onnx(create_model(cfg.model).eval(), cfg, out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # not the new image encoder
    assert sorted(p.name for p in tmp_path.iterdir()) == ["onnx"]  # no temporary folder left
