"""Search spaces: what a policy may choose per group (channel) or per layer (unstructured)."""
from __future__ import annotations

from autoprune.search_spaces.channel import ChannelSpace, auto_round_to
from autoprune.search_spaces.unstructured import UnstructuredSpace, sparsity_report

__all__ = ["ChannelSpace", "UnstructuredSpace", "auto_round_to", "sparsity_report"]
