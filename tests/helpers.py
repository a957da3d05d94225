"""Helpers shared by the unit and integration tiers."""

import io
import os
import tarfile
from pathlib import Path

import torch


def write_tar(path: Path, members: dict[str, bytes]) -> Path:
    """A tar file (a WebDataset shard, say) holding ``members`` (name -> bytes), in that order."""
    with tarfile.open(path, "w") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


class _Holder(torch.nn.Module):
    """Tensors under dotted names, as nested modules (what OpenAI's released TorchScript archives hold)."""

    def __init__(self, sd: dict[str, torch.Tensor]) -> None:
        super().__init__()
        for name, value in sd.items():
            owner = self
            *path, leaf = name.split(".")
            for part in path:
                if not hasattr(owner, part):
                    owner.add_module(part, torch.nn.Module())
                owner = getattr(owner, part)
            owner.register_buffer(leaf, value.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def torchscript_archive(sd: dict[str, torch.Tensor]) -> torch.jit.ScriptModule:
    """A TorchScript module holding ``sd`` (OpenAI's names), to ``.save`` like OpenAI's ``.pt`` releases."""
    return torch.jit.trace(_Holder(sd), torch.zeros(1))


def spy_fsync_and_replace(monkeypatch) -> list[tuple[str, ...]]:
    """Record ``("fsync", path)`` and ``("replace", src, dst)`` (resolved paths) in call order; both still run."""
    events: list[tuple[str, ...]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src, dst) -> None:
        events.append(("replace", os.path.realpath(src), os.path.realpath(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    return events
