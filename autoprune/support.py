"""Which models the engine takes, and the one-line reasons it refuses the others.

Torch-Pruning's dependency graph does the real work; what it cannot prune is refused here with a
line that names the operation and the limitation, before any file is written:

* attention layers (vision transformers: ViT, Swin, MaxViT): pruning them needs head-aware
  choices (whole heads, embedding widths tied to the heads) that a per-channel-group ratio space
  does not model;
* a channel shuffle (ShuffleNet V2: view -> transpose -> view over the channel axis): Torch-Pruning
  1.6 cannot map the interleaved channels back to indices (its reshape index mapping divides by
  zero), and its own torchvision benchmark lists ShuffleNet as unsupported.

Auxiliary classifiers (GoogLeNet's aux1/aux2, Inception v3's AuxLogits) run only in train mode,
so the eval-mode trace never sees them and they could not be pruned consistently with the rest.
They are dropped, as torchvision itself drops GoogLeNet's when it loads pretrained weights.
"""
from __future__ import annotations

import logging
import traceback

from torch import nn

from autoprune.errors import UserError

log = logging.getLogger(__name__)

# class names of attention layers in torchvision's transformers (and most user ones)
_ATTENTION_MARKERS = ("multiheadattention", "selfattention", "windowattention")


def refuse_unsupported(model: nn.Module) -> None:
    """UserError naming the first attention layer of a transformer; nothing for a CNN."""
    for name, m in model.named_modules():
        kind = type(m).__name__
        if isinstance(m, nn.MultiheadAttention) or any(k in kind.lower() for k in _ATTENTION_MARKERS):
            raise UserError(f"vision transformers are not supported: {name or 'the model'} is an attention layer "
                            f"({kind}); autoprune searches convolution channel groups, and attention heads need "
                            "head-aware pruning it does not model (README, Models)")


def trace_failure(exc: BaseException) -> UserError:
    """The one line for a Torch-Pruning tracing failure: the operation when it is a known limitation."""
    import torch_pruning as tp

    frames = [f.name for f in traceback.extract_tb(exc.__traceback__)]
    if "update_reshape_index_mapping" in frames:
        return UserError("cannot trace the model for pruning: it reshapes the channel axis across groups (a channel "
                         f"shuffle, view -> transpose -> view, as in ShuffleNet), which Torch-Pruning {tp.__version__} "
                         f"cannot map to channel indices ({type(exc).__name__} in its reshape index mapping); "
                         "not supported")
    if "update_concat_index_mapping" in frames:
        return UserError("cannot trace the model for pruning: it concatenates sliced tensors (torch.cat of "
                         f"x[:, :k]-style slices, as DPN and CS3-DarkNet do), whose channel counts Torch-Pruning "
                         f"{tp.__version__} cannot infer ({type(exc).__name__} in its concat index mapping); "
                         "not supported")
    detail = str(exc).splitlines()[0] if str(exc) else ""
    return UserError(f"cannot trace the model for pruning: {type(exc).__name__}: {detail}")


def drop_auxiliary_heads(model: nn.Module, name: str = "model") -> list[str]:
    """Remove train-only auxiliary classifiers (torchvision GoogLeNet / Inception3) in place; their names.

    Says so in one warning: fine-tuning then trains the main classifier alone.
    """
    from torchvision.models import GoogLeNet, Inception3

    heads = {GoogLeNet: ("aux1", "aux2"), Inception3: ("AuxLogits",)}.get(type(model), ())
    dropped = [h for h in heads if getattr(model, h, None) is not None]
    for h in heads:
        setattr(model, h, None)
    if heads:
        model.aux_logits = False
    if dropped:
        log.warning("%s: dropped the auxiliary classifier(s) %s: they run only in training, so pruning and "
                    "fine-tuning use the main classifier alone", name, ", ".join(dropped))
    return dropped
