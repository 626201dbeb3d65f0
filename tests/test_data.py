"""Data splits: held-out carved from training, disjoint, fixed by seed; user factories; tensor caching."""
from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest
import torch

from autoprune.data import TensorSplit, load_data
from autoprune.errors import UserError
from autoprune.evaluate import as_tensors

FASHION = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.skipif(not FASHION.exists(), reason="dataset-fashion-mnist not installed")
def test_fashion_mnist_heldout_is_carved_from_train_and_disjoint() -> None:
    data = load_data("fashion-mnist", heldout_size=5000)
    assert (len(data.train), len(data.heldout), len(data.test)) == (55000, 5000, 10000)
    assert data.num_classes == 10 and data.in_channels == 1 and data.input_size == (28, 28)
    # disjoint: no held-out image appears among the training images (compare exact pixel rows)
    train_keys = {hash(x.numpy().tobytes()) for x in data.train.images[:, 0, 14]}
    held_keys = [hash(x.numpy().tobytes()) for x in data.heldout.images[:200, 0, 14]]
    assert sum(k in train_keys for k in held_keys) < 5  # a handful of identical rows at most
    again = load_data("fashion-mnist", heldout_size=5000)
    assert torch.equal(again.heldout.labels, data.heldout.labels)
    other = load_data("fashion-mnist", heldout_size=5000, split_seed=1)
    assert not torch.equal(other.heldout.labels, data.heldout.labels)


def test_unknown_and_malformed_specs_are_user_errors() -> None:
    for spec in ("mnist-fashion", "imagenet", "imagenet:/nonexistent/path", "nosuchpkg.mod:make"):
        with pytest.raises(UserError):
            load_data(spec)


def test_user_factory_plain_dataset_is_split_and_cached_as_tensors(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "mydata.py").write_text(textwrap.dedent("""
        import torch
        from torch.utils.data import Dataset

        class Noise(Dataset):
            def __init__(self, n, seed):
                g = torch.Generator().manual_seed(seed)
                self.x = torch.randn(n, 3, 8, 8, generator=g)
                self.y = torch.randint(0, 4, (n,), generator=g)
            def __len__(self):
                return len(self.y)
            def __getitem__(self, i):
                return self.x[i], int(self.y[i])

        def splits():
            return Noise(300, 0), Noise(100, 1), 4
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    data = load_data("mydata:splits", heldout_size=50)
    assert (len(data.train), len(data.heldout), len(data.test)) == (250, 50, 100)
    assert data.num_classes == 4 and data.in_channels == 3 and data.input_size == (8, 8)
    cached = as_tensors(data.heldout)
    assert isinstance(cached, TensorSplit) and cached.images.shape == (50, 3, 8, 8)
    x, y = data.heldout[7]
    assert torch.equal(cached.images[7], x) and int(cached.labels[7]) == y
    assert as_tensors(data.heldout, max_bytes=10) is data.heldout  # too big: stays streamed
    sys.modules.pop("mydata", None)
