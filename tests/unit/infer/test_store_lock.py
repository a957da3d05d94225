"""One writer per store manifest: a second `cliplab embed` into a store being written is refused in one line,
while the ranks of one torchrun run each lock their own manifest."""

import fcntl
import os

import pytest
from PIL import Image
from tests.integration.helpers import tiny_checkpoint

from cliplab.cli.main import main
from cliplab.errors import CliplabError
from cliplab.infer.store import EmbeddingStore


def _hold(path):
    """The lock a running `cliplab embed` holds on a store (rank 0), taken as it does: flock on STORE/.lock."""
    path.mkdir(parents=True, exist_ok=True)
    fh = open(path / ".lock", "a+", encoding="utf-8")  # noqa: SIM115 (closed by the caller)
    fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    fh.write("4242\n")
    fh.flush()
    return fh


def test_a_second_writer_is_refused_in_one_line_naming_the_store(tmp_path, capsys):
    ckpt = tiny_checkpoint(tmp_path / "ckpt")
    (tmp_path / "imgs").mkdir()
    for i in range(2):
        Image.new("RGB", (36, 36), (90 * i, 0, 0)).save(tmp_path / "imgs" / f"{i}.png")
    store = tmp_path / "store"
    args = ["embed", "--checkpoint", str(ckpt), "--images", str(tmp_path / "imgs"), "--output", str(store)]
    held = _hold(store)
    try:
        assert main(args) == 2
        err = capsys.readouterr().err.strip()
        assert err == (f"error: {store}: another process (pid 4242) is writing this store; wait for it to end "
                       "or stop it, then run again")
        assert not list(store.glob("manifest*.json")) and not list(store.glob("part-*"))  # nothing written
    finally:
        held.close()
    assert main(args) == 0  # once the first writer is gone
    assert len(EmbeddingStore(store)) == 2
    assert main(args) == 0  # the run's own lock went with it: a resumed run is not refused
    assert "embedded 0 image(s)" in capsys.readouterr().out


def test_ranks_lock_their_own_manifests(tmp_path):
    from cliplab.infer.store import lock_store

    first, second = lock_store(tmp_path / "s", 0), lock_store(tmp_path / "s", 1)  # one run's two ranks
    try:
        for rank in (0, 1):
            with pytest.raises(CliplabError, match=rf"s: another process \(pid {os.getpid()}\) is writing this"):
                lock_store(tmp_path / "s", rank)
    finally:
        first.close()
        second.close()
    lock_store(tmp_path / "s", 0).close()  # released with the file, as when the process ends
