"""Text towers: the causal Transformer CLIP uses, and a bag-of-words baseline."""

from __future__ import annotations

import torch
from torch import nn

from cliplab.config import CBOWTextConfig, TextTransformerConfig
from cliplab.model.layers import Transformer

__all__ = ["CBOWText", "TextTransformer", "batches_by_length", "eot_positions", "pool_positions"]


def eot_positions(tokens: torch.Tensor, eot_token_id: int) -> torch.Tensor:
    """Index of the first end-of-text token in each row; the last position if a row has none."""
    is_eot = tokens == eot_token_id  # (B, L)
    first = is_eot.int().argmax(dim=-1)  # (B,)
    return torch.where(is_eot.any(dim=-1), first, torch.full_like(first, tokens.shape[-1] - 1))


def pool_positions(tokens: torch.Tensor, cfg: TextTransformerConfig) -> torch.Tensor:
    """The position each row of ``tokens`` (B, L) is pooled at, (B,): see ``TextTransformerConfig.pool``."""
    if cfg.pool == "argmax":
        return tokens.argmax(dim=-1)  # the first of equal maxima
    return eot_positions(tokens, cfg.eot_token_id)


def batches_by_length(tokens: torch.Tensor, batch_size: int) -> list[torch.Tensor]:
    """Row indices of ``tokens`` (N, L) in batches of at most ``batch_size``, shortest texts first.

    The text tower skips the positions after a batch's longest text, so batches of like lengths skip nearly
    all padding: a third of the tokens of ImageNet's 80-template prompts. A text's length is taken as its
    last non-zero position + 1 (padding is 0); it only orders the rows, so any tokenizer is safe."""
    L = tokens.shape[1]
    used = ((tokens != 0) * torch.arange(1, L + 1, device=tokens.device)).amax(dim=1)  # (N,)
    return list(torch.argsort(used, stable=True).split(batch_size))


class TextTransformer(nn.Module):
    """Token + learned positions → causal pre-LN blocks → ``ln_final`` → features at end-of-text → proj."""

    def __init__(self, cfg: TextTransformerConfig, embed_dim: int) -> None:
        super().__init__()
        self.cfg = cfg
        w = cfg.width
        self.token_embedding = nn.Embedding(cfg.vocab_size, w)
        self.positional_embedding = nn.Parameter(torch.empty(cfg.context_length, w))
        self.transformer = Transformer(w, cfg.layers, cfg.heads, cfg.mlp_ratio, cfg.activation, cfg.ln_eps)
        self.ln_final = nn.LayerNorm(w, eps=cfg.ln_eps)
        self.proj = nn.Linear(w, embed_dim, bias=False)
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        self.transformer.init_weights()
        nn.init.normal_(self.proj.weight, std=w**-0.5)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        n_ctx = self.cfg.context_length
        eot = pool_positions(tokens, self.cfg)  # (B,)
        if not (torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or torch.compiler.is_compiling()):
            # Causal attention: positions after the last end-of-text never reach a pooled feature, so
            # drop them (padding is most of a 77-token context). Exact, and several times faster.
            # (Not under torch.compile: a data-dependent length would break the graph and recompile.)
            used = int(eot.max()) + 1
            if used > n_ctx:
                raise ValueError(f"text has {used} tokens but the model's context length is {n_ctx}")
            tokens = tokens[:, :used]
        elif tokens.shape[1] > n_ctx:
            raise ValueError(f"text has {tokens.shape[1]} tokens but the model's context length is {n_ctx}")
        L = tokens.shape[1]
        x = self.token_embedding(tokens) + self.positional_embedding[:L]  # (B, L, C)
        x = self.ln_final(self.transformer(x, causal=True, row=eot))  # (B, C): features at end-of-text
        return self.proj(x)  # (B, D)


class CBOWText(nn.Module):
    """Continuous bag of words: mean of the token embeddings up to end-of-text, then a projection."""

    def __init__(self, cfg: CBOWTextConfig, embed_dim: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.width)
        self.proj = nn.Linear(cfg.width, embed_dim, bias=False)
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.proj.weight, std=cfg.width**-0.5)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        L = tokens.shape[1]
        eot = eot_positions(tokens, self.cfg.eot_token_id)  # (B,)
        keep = torch.arange(L, device=tokens.device)[None, :] <= eot[:, None]  # (B, L): up to end-of-text
        x = self.token_embedding(tokens) * keep.unsqueeze(-1)  # (B, L, C)
        x = x.sum(dim=1) / keep.sum(dim=1, keepdim=True)  # (B, C)
        return self.proj(x)  # (B, D)
