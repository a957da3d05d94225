"""Interoperability with OpenAI, open_clip and Hugging Face checkpoints."""

from cliplab.convert.foreign import load_foreign

__all__ = ["load_foreign"]
