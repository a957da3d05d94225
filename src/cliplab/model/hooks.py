"""Whether forward hooks watch a module tree: asked once per tower call, so it must cost a few microseconds.

The CPU inference paths reuse buffers across blocks, write residual sums into a branch's output and skip
sub-module calls; a hook would see overwritten or missing tensors. With hooks the towers run as a plain
PyTorch model does. Walking a ViT-B tower's 122 modules for their hook dicts takes 30 µs, so the dicts are
collected once per tree and collected again after any submodule is registered anywhere in the process (a
global registration hook counts those). ``ModuleList.insert`` writes ``_modules`` directly, which that count
does not see; a hook registered only on a module inserted that way, after a tower call, goes unnoticed.
"""

from __future__ import annotations

import weakref

import torch.nn.modules.module as _module
from torch import nn

__all__ = ["hooks_active"]

# tree root -> (registration count when collected, weak references to every forward and forward-pre hook dict
# in the tree). Weak: a hook that refers to its model (a feature extractor holding it) must not keep it alive.
_HOOK_DICTS: weakref.WeakKeyDictionary[nn.Module, tuple[int, list[weakref.ref]]] = weakref.WeakKeyDictionary()


class _Registrations:
    """Counts submodule registrations in this process. Installed on the first question, not on import."""

    count = 0
    _handle = None

    @classmethod
    def hook(cls, module: nn.Module, name: str, submodule: nn.Module | None) -> None:
        cls.count += 1

    @classmethod
    def watch(cls) -> None:
        if cls._handle is None:
            cls._handle = _module.register_module_module_registration_hook(cls.hook)


def hooks_active(root: nn.Module) -> bool:
    """True if a forward or forward-pre hook is registered on ``root``, any module under it, or globally."""
    if _module._global_forward_hooks or _module._global_forward_pre_hooks:
        return True
    cached = _HOOK_DICTS.get(root)
    if cached is None or cached[0] != _Registrations.count:
        _Registrations.watch()
        refs = [weakref.ref(d) for m in root.modules() for d in (m._forward_hooks, m._forward_pre_hooks)]
        cached = _HOOK_DICTS[root] = (_Registrations.count, refs)
    return any(ref() for ref in cached[1])  # a dict gone with its module is empty
