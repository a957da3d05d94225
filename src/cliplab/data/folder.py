"""A folder of images, each with a same-name ``.txt`` caption (``cat.jpg`` + ``cat.txt``), searched recursively."""

from __future__ import annotations

import os
from pathlib import Path

from torch.utils.data import Dataset

from cliplab.data.batch import BadSample
from cliplab.data.samples import Tokenizer, Transform, make_pair, seeded
from cliplab.errors import CliplabError

__all__ = ["IMAGE_EXTENSIONS", "FolderDataset", "hidden", "list_images"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")


def list_images(root: str | os.PathLike[str]) -> list[Path]:
    """The image files under ``root``, sorted; none under a dot-name (macOS's ``._photo.jpg`` resource forks,
    which copies from a Mac leave beside every image, ``.thumbnails/``, ...)."""
    root = Path(root)
    if not root.is_dir():
        raise CliplabError(f"{root}: not a folder")
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
                  and not hidden(p, root))


def hidden(path: Path, root: Path) -> bool:
    """Whether a dot-name lies on the way from ``root`` to ``path``."""
    return any(part.startswith(".") for part in path.relative_to(root).parts)


class FolderDataset(Dataset):
    def __init__(self, root: str | os.PathLike[str], transform: Transform, tokenizer: Tokenizer) -> None:
        self.root = Path(root)
        self.images = list_images(self.root)
        if not self.images:
            raise CliplabError(f"{self.root}: no images found (looked for {', '.join(IMAGE_EXTENSIONS)})")
        self.transform, self.tokenizer = transform, tokenizer
        self.seed = 0  # of the augmentation

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple | BadSample:
        """Image ``key``, or ``(image, epoch)``: augmentation drawn from (seed, epoch, image)."""
        i, epoch = key if isinstance(key, tuple) else (key, 0)
        image = self.images[i]
        try:
            caption = image.with_suffix(".txt").read_bytes()
        except OSError:
            return BadSample(str(image), "no caption file " + image.with_suffix(".txt").name)
        transform = seeded(self.transform, self.seed, epoch, i)
        return make_pair(image, caption, str(image), transform, self.tokenizer)
