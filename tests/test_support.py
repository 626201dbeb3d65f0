"""What the engine refuses (transformers, channel shuffle) and what it drops (train-only auxiliary heads)."""
from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from autoprune.errors import UserError
from autoprune.graph import build_graph
from autoprune.zoo import build_model


class TinyTransformer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, 16, 4, stride=4)
        self.attn = nn.MultiheadAttention(16, 2, batch_first=True)
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        t = self.embed(x).flatten(2).transpose(1, 2)
        return self.head(self.attn(t, t, t)[0].mean(1))


def test_a_transformer_is_refused_naming_its_attention_layer():
    with pytest.raises(UserError, match=r"vision transformers are not supported: attn is an attention layer "
                                        r"\(MultiheadAttention\)"):
        build_graph(TinyTransformer().eval(), (3, 16, 16))


def test_channel_shuffle_is_refused_naming_the_operation():
    model = torchvision.models.shufflenet_v2_x0_5(num_classes=10).eval()
    with pytest.raises(UserError, match="channel shuffle.*Torch-Pruning .* not supported"):
        build_graph(model, (3, 32, 32))


@pytest.mark.parametrize("name,heads", [("googlenet", ("aux1", "aux2")), ("inception_v3", ("AuxLogits",))])
def test_auxiliary_heads_are_dropped_with_a_warning_and_checkpoints_with_them_still_load(name, heads, tmp_path,
                                                                                         caplog):
    full = torchvision.models.get_model(name, num_classes=10)  # torchvision's own, auxiliary heads included
    assert all(getattr(full, h) is not None for h in heads)
    path = tmp_path / "with-aux.pt"
    torch.save(full.state_dict(), path)
    with caplog.at_level("WARNING"):
        model = build_model(name, num_classes=10, in_channels=3, weights=str(path)).model
    assert all(getattr(model, h) is None for h in heads) and not model.aux_logits
    assert any("dropped the auxiliary classifier" in r.message for r in caplog.records)
    assert torch.equal(model.fc.weight, full.fc.weight)  # the rest of the checkpoint was loaded
    model.train()  # train mode now gives plain logits: what fine-tuning's loss expects
    size = 96 if name == "inception_v3" else 64
    assert model(torch.randn(2, 3, size, size)).shape == (2, 10)
