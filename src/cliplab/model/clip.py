"""The two-tower CLIP model: an image encoder, a text encoder and a learned temperature."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from cliplab.config import ModelConfig
from cliplab.errors import CliplabError
from cliplab.model.hooks import hooks_active

__all__ = ["CLIP", "CLIPOutput"]


@dataclass
class CLIPOutput:
    """Normalised embeddings and the temperature; the N×M logits are computed only when asked for."""

    image_embeds: torch.Tensor  # (N, D), L2-normalised
    text_embeds: torch.Tensor  # (M, D), L2-normalised
    logit_scale: torch.Tensor  # scalar multiplier: exp of the learned log-scale, capped
    logit_bias: torch.Tensor | None = None  # scalar, SigLIP models only

    @property
    def logits_per_image(self) -> torch.Tensor:
        logits = self.logit_scale * self.image_embeds @ self.text_embeds.T  # (N, M)
        return logits if self.logit_bias is None else logits + self.logit_bias

    @property
    def logits_per_text(self) -> torch.Tensor:
        return self.logits_per_image.T  # (M, N)


class CLIP(nn.Module):
    """Build with :func:`cliplab.model.build.create_model`; towers are chosen by the config."""

    def __init__(self, cfg: ModelConfig, visual: nn.Module, text: nn.Module) -> None:
        super().__init__()
        self.cfg = cfg
        self.visual = visual
        self.text = text
        self.logit_scale = nn.Parameter(torch.tensor(float(cfg.init_logit_scale)))
        self.logit_bias = None
        if cfg.init_logit_bias is not None:
            self.logit_bias = nn.Parameter(torch.tensor(float(cfg.init_logit_bias)))

    @property
    def image_size(self) -> int:
        return self.cfg.vision.image_size

    @property
    def context_length(self) -> int:
        return self.cfg.text.context_length

    def encode_image(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """Images (N, 3, S, S) → embeddings (N, D)."""
        s = self.cfg.vision.image_size
        if images.dim() != 4 or tuple(images.shape[1:]) != (3, s, s):
            raise CliplabError(f"encode_image: expected images of shape (N, 3, {s}, {s}), got {tuple(images.shape)} "
                               "(preprocess them with the model's own preprocess)")
        stem = next((m.weight for m in self.visual.modules() if isinstance(m, nn.Conv2d)), None)
        if stem is not None and images.is_floating_point() and images.dtype != stem.dtype:
            images = images.to(stem.dtype)  # pixels in the first convolution's dtype (as OpenAI's casts to its own)
        compiled = self.__dict__.get("_compiled_visual")
        if compiled is not None and (torch.is_grad_enabled() or self.visual.training  # BatchNorm: batch statistics
                                     or hooks_active(self.visual)  # the graph would not call them
                                     or not self._compiled_weights_current()):
            compiled = None
        x = compiled(images) if compiled is not None else self.visual(images)
        return F.normalize(x, dim=-1) if normalize else x

    def _compiled_weights_current(self) -> bool:
        """False (and the compiled tower dropped, with a warning) once the image tower's weights changed after
        :meth:`compile_for_inference` froze them into the graph."""
        from cliplab.model.cpu_inference import _unchanged

        if _unchanged(self.__dict__["_compiled_stamp"], _frozen_tensors(self.visual)):
            return True
        import warnings

        from cliplab.errors import CliplabWarning

        for key in ("_compiled_visual", "_compiled_stamp"):
            self.__dict__.pop(key, None)
        warnings.warn("the image tower's weights or buffers changed after compile_for_inference(): running it eagerly; "
                      "call compile_for_inference() again to compile the new weights", CliplabWarning, stacklevel=3)
        return False

    def compile_for_inference(self) -> CLIP:
        """Compile the image tower with ``torch.compile`` for inference (inductor, weights frozen into the graph
        as constants), used by :meth:`encode_image` whenever autograd is off. The first call per image size
        compiles (20-35 s for ViT-B/32 on 2 CPU cores); after that it ran 1.03-1.08x the eager tower. It is used
        in eval mode only (in train mode BatchNorm normalises with the batch's own statistics). A batch
        smaller than the largest seen so far is zero-padded up to it instead of compiled anew. The text
        tower stays eager: it drops padding per batch, which a compiled graph cannot. Weights are read when a
        shape is compiled: a change to them afterwards is detected (as for the bf16 weight cache), and the
        tower then runs eagerly, with a warning, until this is called again. So is a change to its buffers
        (BatchNorm running statistics), which freezing bakes in too. While forward hooks are registered on the
        tower (or globally) it runs eagerly, so that they are called."""
        import torch._inductor.config as inductor_config

        from cliplab.model.cpu_inference import _stamp

        compiled = torch.compile(self.visual, dynamic=False)
        largest = [0]  # the batch size compiled for: smaller batches are padded up to it, not recompiled

        def run(images: torch.Tensor) -> torch.Tensor:
            n = images.shape[0]
            largest[0] = max(largest[0], n)
            if n < largest[0]:  # in eval mode images never interact, so zero padding leaves the real rows alone
                images = torch.cat([images, images.new_zeros(largest[0] - n, *images.shape[1:])])  # (B, 3, S, S)
            # Freezing (weights as constants, pre-packed for the matmul library) is read when a shape compiles;
            # torch.compile's `options` does not pass it on, so patch the config around each call.
            with inductor_config.patch(freezing=True):
                return compiled(images)[:n]  # (n, D)

        self.__dict__["_compiled_visual"] = run  # in __dict__, not a submodule: the state dict stays as it is
        self.__dict__["_compiled_stamp"] = _stamp(_frozen_tensors(self.visual))
        return self

    def encode_text(self, tokens: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """Token ids (M, L) → embeddings (M, D)."""
        if tokens.shape[0] == 0:
            return tokens.new_zeros(0, self.cfg.embed_dim, dtype=self.logit_scale.dtype)  # (0, D)
        if not (torch.jit.is_tracing() or torch.compiler.is_compiling()):
            top, vocab = int(tokens.max()), self.cfg.text.vocab_size
            if top >= vocab or int(tokens.min()) < 0:
                raise CliplabError(f"token id {top if top >= vocab else int(tokens.min())} is outside this model's "
                                   f"vocabulary of {vocab}: the tokenizer is not the model's own")
        x = self.text(tokens)
        return F.normalize(x, dim=-1) if normalize else x

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state.pop("_compiled_visual", None)  # tied to this object's weights: copies and pickles run eager
        state.pop("_compiled_stamp", None)
        return state

    def scale(self) -> torch.Tensor:
        """The logit multiplier ``exp(logit_scale)``: as OpenAI's and HF's models use it in eval mode (OpenAI's
        trained value, ln(100) in fp16, gives 100.03); in training mode capped at ``max_logit_scale``, with no
        gradient beyond the cap (the stored value is also clamped after each step)."""
        s = self.logit_scale.exp()
        return s.clamp(max=self.cfg.max_logit_scale) if self.training else s

    @torch.no_grad()
    def clamp_logit_scale(self) -> None:
        """Keep the stored log-scale within [0, ln(max)] (done after each optimiser step)."""
        self.logit_scale.clamp_(0, math.log(self.cfg.max_logit_scale))

    def forward(self, images: torch.Tensor | None = None, texts: torch.Tensor | None = None) -> CLIPOutput:
        img = self.encode_image(images, normalize=True) if images is not None else None
        txt = self.encode_text(texts, normalize=True) if texts is not None else None
        return CLIPOutput(img, txt, self.scale(), self.logit_bias)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        for module in self.modules():
            if hasattr(module, "grad_checkpointing"):
                module.grad_checkpointing = enable

    def lock(self, tower: str) -> None:
        """Freeze a tower (``"image"`` or ``"text"``) for LiT-style training: no gradients, and it stays in
        eval mode through ``model.train()`` (a ResNet's batch-norm statistics stay as loaded)."""
        module = {"image": self.visual, "text": self.text}[tower]
        for p in module.parameters():
            p.requires_grad_(False)
        self.locked = (*getattr(self, "locked", ()), tower)
        module.eval()

    def train(self, mode: bool = True) -> CLIP:
        super().train(mode)
        for tower in getattr(self, "locked", ()):
            {"image": self.visual, "text": self.text}[tower].eval()
        return self


def _frozen_tensors(tower: nn.Module) -> list[torch.Tensor]:
    """What inductor's freezing bakes into a compiled tower: its parameters and its buffers."""
    return [*tower.parameters(), *tower.buffers()]
