"""The 1-bit search space: op table (:mod:`.ops`), supernet (:mod:`.supernet`) and genotypes (:mod:`.genotype`)."""

from tfbnas.space.genotype import (Genotype, GenotypeError, count_param_free, derive_genotype, edge_index, num_edges,
                                   plot_cell)
from tfbnas.space.ops import (BATS_GROUPS, OPS, PARAM_FREE_OPS, PRESETS, STEM_STRIDES, SpaceError, child_op,
                              group_count, make_search_op, preset_ops, stem_channels, stem_stride_for, transfer_weights)
from tfbnas.space.supernet import MixedEdge, SearchCell, SuperNet, reduction_cells

__all__ = [
    "Genotype", "GenotypeError", "count_param_free", "derive_genotype", "edge_index", "num_edges", "plot_cell",
    "BATS_GROUPS", "OPS", "PARAM_FREE_OPS", "PRESETS", "STEM_STRIDES", "SpaceError", "child_op", "group_count",
    "make_search_op", "preset_ops", "stem_channels", "stem_stride_for", "transfer_weights", "MixedEdge", "SearchCell",
    "SuperNet", "reduction_cells",
]
