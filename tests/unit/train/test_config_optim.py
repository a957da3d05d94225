import math

import pytest
import torch

from cliplab.api import create_model
from cliplab.errors import CliplabError
from cliplab.train.config import OptimConfig, load_train_config
from cliplab.train.optim import build_optimizer, lr_at


def test_overrides_are_typed_and_layered(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("batch_size: 64\noptim:\n  lr: 0.01\ndata:\n  format: csv\n  train_data: x.csv\n")
    cfg = load_train_config(str(path), ["optim.lr=1e-3", "data.workers=3", "optim.betas=[0.9, 0.95]"],
                            {"batch_size": 32})
    assert cfg.optim.lr == 1e-3 and isinstance(cfg.optim.lr, float)
    assert cfg.data.workers == 3 and cfg.batch_size == 32 and cfg.optim.betas == (0.9, 0.95)
    assert cfg.data.format == "csv"
    path.write_text("optim:\n  lr: 1e-3\n  weight_decay: 2E-1\n")  # YAML 1.1 reads these as strings
    cfg = load_train_config(str(path), [], {})
    assert (cfg.optim.lr, cfg.optim.weight_decay) == (1e-3, 0.2)
    path.write_text("optim:\n  lr: fast\n")
    with pytest.raises(CliplabError, match="'fast' is not a float"):
        load_train_config(str(path), [], {})


@pytest.mark.parametrize("override,match", [
    ("optim.lrr=1", "unknown training config key 'optim.lrr'"),
    ("batch_size=abc", "batch_size: 'abc' is not a int"),
    ("precision=fp8", "precision"),
    ("nonsense", "key=value"),
])
def test_bad_overrides(override, match):
    with pytest.raises(CliplabError, match=match):
        load_train_config(None, [override])


def test_locking_both_towers_is_refused_and_the_model_defaults_by_source():
    with pytest.raises(CliplabError, match="lock_image and lock_text together leave only the temperature"):
        load_train_config(None, ["lock_image=true", "lock_text=true"])
    assert load_train_config(None, []).model == "ViT-Tiny-32px"  # from scratch: the default architecture
    assert load_train_config(None, ["init_from=ckpt"]).model is None  # fine-tuning: the checkpoint's own


def test_weight_decay_groups():
    model = create_model("ViT-Tiny-32px")
    opt = build_optimizer(model, OptimConfig(weight_decay=0.2))
    decayed = {id(p) for p in opt.param_groups[0]["params"]}
    names = {n: id(p) in decayed for n, p in model.named_parameters()}
    assert names["visual.transformer.blocks.0.attn.qkv.weight"] and names["text.proj.weight"]
    for n in ("logit_scale", "visual.class_embedding", "visual.positional_embedding", "text.token_embedding.weight",
              "visual.ln_pre.weight", "visual.transformer.blocks.0.attn.qkv.bias"):
        assert not names[n], n
    assert opt.param_groups[1]["weight_decay"] == 0.0
    assert opt.defaults["betas"] == (0.9, 0.98) and opt.defaults["eps"] == 1e-6


def test_schedule():
    cfg = OptimConfig(lr=1.0, warmup_steps=10, min_lr_ratio=0.0)
    assert lr_at(0, cfg, 110) == pytest.approx(0.1)
    assert lr_at(9, cfg, 110) == pytest.approx(1.0)
    assert lr_at(60, cfg, 110) == pytest.approx(0.5)
    assert lr_at(110, cfg, 110) == pytest.approx(0.0, abs=1e-12)
    assert lr_at(35, cfg, 110) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.25)))
    assert lr_at(50, OptimConfig(lr=2.0, warmup_steps=0, schedule="constant"), 100) == 2.0
    assert type(lr_at(5, cfg, 110)) is float  # a plain number, ready for param_group["lr"] and the log


def test_fused_optimizer_steps_like_the_reference_adamw():
    torch.manual_seed(0)
    model = create_model("ViT-Tiny-32px")
    ref = create_model("ViT-Tiny-32px")
    ref.load_state_dict(model.state_dict())
    cfg = OptimConfig(lr=1e-2)
    opt = build_optimizer(model, cfg)
    assert opt.defaults["fused"]
    ref_groups = [{"params": [p for (_, p), g in zip(ref.named_parameters(), _group_of(opt, model), strict=True)
                              if g == i], "weight_decay": opt.param_groups[i]["weight_decay"]} for i in range(2)]
    ref_opt = torch.optim.AdamW(ref_groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, foreach=False)
    for step in range(3):
        for m, o in ((model, opt), (ref, ref_opt)):
            g = torch.Generator().manual_seed(step)
            for p in m.parameters():
                p.grad = torch.randn(p.shape, generator=g)
            o.step()
    for (name, a), b in zip(model.named_parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7, msg=name)


def _group_of(opt, model):
    ids = [{id(p) for p in group["params"]} for group in opt.param_groups]
    return [0 if id(p) in ids[0] else 1 for p in model.parameters()]


def test_text_overrides_are_taken_as_typed():
    cfg = load_train_config(None, ["data.csv_separator=|", "output=2024-01-01", "data.csv_caption_key=yes",
                                   "data.csv_img_key=007", "tokenizer=null"])
    assert (cfg.data.csv_separator, cfg.output, cfg.data.csv_caption_key) == ("|", "2024-01-01", "yes")
    assert cfg.data.csv_img_key == "007" and cfg.tokenizer is None
    assert load_train_config(None, ["data.csv_separator=#"]).data.csv_separator == "#"


def test_config_syntax_errors_name_line_and_column(tmp_path):
    (tmp_path / "a.yaml").write_text("batch_size: 8\noptim:\n\tlr: 1\n")
    with pytest.raises(CliplabError, match=r"a\.yaml:3:1: invalid YAML \(found character '\\t'"):
        load_train_config(str(tmp_path / "a.yaml"))
    (tmp_path / "b.json").write_text('{"batch_size": 8,\n "optim": }')
    with pytest.raises(CliplabError, match=r"b\.json:2:11: invalid JSON"):
        load_train_config(str(tmp_path / "b.json"))


def test_data_format_is_told_by_suffix_and_folder_first(tmp_path):
    from cliplab.train.config import infer_format

    (tmp_path / "pets.tarot").mkdir()
    (tmp_path / "star.targets.csv").write_text("filepath,title\n")
    assert infer_format(str(tmp_path / "pets.tarot")) == "folder"
    assert infer_format(str(tmp_path / "star.targets.csv")) == "csv"
    assert infer_format("shards/{00000..00009}.tar") == infer_format("a.tar::b.tar") == "wds"
    with pytest.raises(CliplabError, match="nodir: no such file or folder"):
        infer_format(str(tmp_path / "nodir"))


@pytest.mark.parametrize("override, match", [
    ("seed=-1", "seed and data.synthetic_seed must be in"),
    ("data.synthetic_seed=-3", "seed and data.synthetic_seed must be in"),
    ("time_budget_minutes=.inf", "time_budget_minutes must be > 0 and finite"),
])
def test_seeds_and_the_budget_are_checked_before_any_work(override, match):
    with pytest.raises(CliplabError, match=match):
        load_train_config(None, [override])


def test_a_yaml_section_with_every_key_commented_out_is_an_empty_section(tmp_path):
    (tmp_path / "run.yaml").write_text("steps: 3\ndata:\n  # workers: 0\noptim:\n  # lr: 1e-3\n")
    cfg = load_train_config(str(tmp_path / "run.yaml"), [])
    assert cfg.steps == 3 and cfg.data.workers == 1 and cfg.optim.lr == OptimConfig().lr


def test_the_example_config_in_the_readme_loads():
    from pathlib import Path

    path = Path(__file__).parents[3] / "examples" / "train.yaml"
    cfg = load_train_config(str(path), ["optim.lr=1e-3"], {"batch_size": 64})  # flags over overrides over file
    assert (cfg.model, cfg.batch_size, cfg.optim.lr, cfg.data.format, cfg.save_every) == \
        ("ViT-B-32", 64, 1e-3, "csv", 1000)
