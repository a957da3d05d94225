"""Helpers shared by the unit and integration tiers."""

import io
import tarfile
from pathlib import Path


def write_tar(path: Path, members: dict[str, bytes]) -> Path:
    """A tar file (a WebDataset shard, say) holding ``members`` (name -> bytes), in that order."""
    with tarfile.open(path, "w") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path
