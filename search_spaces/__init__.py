"""Search spaces: what a policy may choose per group (channel) or per layer (unstructured)."""
from __future__ import annotations

from autoprune.search_spaces.channel import ChannelSpace, auto_round_to

__all__ = ["ChannelSpace", "auto_round_to"]
