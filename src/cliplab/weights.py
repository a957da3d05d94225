"""Known pretrained weights: where they live and their checksum. Every tag here is OpenAI's, whose
preprocessing (OpenAI's statistics, bicubic, shortest side + centre crop) is ``CLIPConfig.for_model``'s
default; the converted checkpoint records it, as every cliplab checkpoint does.

Downloads stream to a temporary file and are checked against the published SHA-256. OpenAI publishes
TorchScript archives, which only full unpickling reads; a file whose SHA-256 matches OpenAI's is trusted
that once and converted into the cache as a native safetensors checkpoint, so every later load reads
tensors only. Offline, a download fails with one line saying so.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from cliplab.errors import CliplabError

__all__ = ["PRETRAINED", "download", "pretrained_tags"]

_OPENAI = "https://openaipublic.azureedge.net/clip/models"
# name -> tag -> (url, sha256)
_H = {  # SHA-256 of each file, as published in OpenAI's download URLs
    "RN50": "afeb0e10f9e5a86da6080e35cf09123aca3b358a0c3e3b6c78a7b63bc04b6762",
    "RN101": "8fa8567bab74a42d41c5915025a8e4538c3bdbe8804a470a72f30b0d94fab599",
    "RN50x4": "7e526bd135e493cef0776de27d5f42653e6b4c8bf9e0f653bb11773263205fdd",
    "RN50x16": "52378b407f34354e150460fe41077663dd5b39c54cd0bfd2b27167a4a06ec9aa",
    "RN50x64": "be1cfb55d75a9666199fb2206c106743da0f6468c9d327f3e0d0a543a9919d9c",
    "ViT-B-32": "40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af",
    "ViT-B-16": "5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f",
    "ViT-L-14": "b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836",
    "ViT-L-14-336": "3035c92b350959924f9f00213499208652fc7ea050643e8b385c2dac08641f02",
}
PRETRAINED: dict[str, dict[str, tuple[str, str]]] = {
    "RN50": {"openai": (f"{_OPENAI}/{_H['RN50']}/RN50.pt", _H["RN50"])},
    "RN101": {"openai": (f"{_OPENAI}/{_H['RN101']}/RN101.pt", _H["RN101"])},
    "RN50x4": {"openai": (f"{_OPENAI}/{_H['RN50x4']}/RN50x4.pt", _H["RN50x4"])},
    "RN50x16": {"openai": (f"{_OPENAI}/{_H['RN50x16']}/RN50x16.pt", _H["RN50x16"])},
    "RN50x64": {"openai": (f"{_OPENAI}/{_H['RN50x64']}/RN50x64.pt", _H["RN50x64"])},
    "ViT-B-32": {"openai": (f"{_OPENAI}/{_H['ViT-B-32']}/ViT-B-32.pt", _H["ViT-B-32"])},
    "ViT-B-16": {"openai": (f"{_OPENAI}/{_H['ViT-B-16']}/ViT-B-16.pt", _H["ViT-B-16"])},
    "ViT-L-14": {"openai": (f"{_OPENAI}/{_H['ViT-L-14']}/ViT-L-14.pt", _H["ViT-L-14"])},
    "ViT-L-14-336": {"openai": (f"{_OPENAI}/{_H['ViT-L-14-336']}/ViT-L-14-336px.pt", _H["ViT-L-14-336"])},
}


def pretrained_tags(name: str) -> list[str]:
    return sorted(PRETRAINED.get(name, {}))


def _cache_dir(cache_dir: str | os.PathLike[str] | None) -> Path:
    if cache_dir:
        return Path(cache_dir)
    return Path(os.environ.get("CLIPLAB_CACHE", Path.home() / ".cache" / "cliplab"))


def download(name: str, pretrained: str | None = None, cache_dir: str | os.PathLike[str] | None = None,
             timeout: float = 30.0) -> Path:
    """The local path of ``name``'s ``pretrained`` weights, downloading (and verifying) them if needed."""
    tags = PRETRAINED.get(name, {})
    tag = pretrained or ("openai" if "openai" in tags else None)
    if not tags:
        raise CliplabError(f"{name}: an architecture without published weights; cliplab.create_model({name!r}) "
                           "gives a random initialisation, or pass a local checkpoint path")
    if tag not in tags:
        raise CliplabError(f"{name}: no pretrained weights {pretrained!r} (known: {', '.join(tags)}); "
                           "use cliplab.create_model for a random initialisation, or pass a local path")
    url, sha = tags[tag]
    cache = _cache_dir(cache_dir)
    target = cache / f"{name}-{tag}.safetensors"
    if target.exists():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    fd, raw = tempfile.mkstemp(dir=cache, prefix=f".{name}-{tag}-", suffix=Path(url).suffix)
    os.close(fd)
    try:
        _fetch(url, sha, Path(raw), f"{name} ({tag})", timeout)
        _to_native(Path(raw), target, f"{name}-{tag}")
    finally:
        Path(raw).unlink(missing_ok=True)
    return target


def _fetch(url: str, sha: str, dst: Path, what: str, timeout: float) -> None:
    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp, open(dst, "wb") as fh:
            while chunk := resp.read(1 << 20):
                digest.update(chunk)
                fh.write(chunk)
    except (urllib.error.URLError, OSError, TimeoutError) as err:
        reason = getattr(err, "reason", err)
        raise CliplabError(f"could not download {what} weights: {reason}; no network? "
                           "pass a local checkpoint path instead") from None
    if digest.hexdigest() != sha:
        raise CliplabError(f"{url}: checksum mismatch (got {digest.hexdigest()[:12]}..., "
                           f"expected {sha[:12]}...); the download was discarded")


def _to_native(raw: Path, target: Path, name: str) -> None:
    """A verified download → a native checkpoint, written atomically (a TorchScript archive is read with full
    unpickling here, and only here: its bytes are the ones OpenAI published)."""
    from cliplab.checkpoint import save_checkpoint
    from cliplab.convert.foreign import load_foreign

    cfg, sd = load_foreign(raw, allow_unsafe=True)
    save_checkpoint(sd, dataclasses.replace(cfg, name=name), target)
