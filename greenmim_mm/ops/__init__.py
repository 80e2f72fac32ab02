"""The sparse trick in one place: masks, geometry, window plans and grouping, packed attention,
sparse convolution."""
from .attention import (BACKENDS, flex_available, flex_window_attention,
                        padded_window_attention, resolve_backend, window_attention)
from .geometry import (StageGeometry, child_index, gather_children, gather_tokens,
                       neighbour_index, scatter_tokens, visible_coords)
from .grouping import algorithm1_grouping, grouping_cost, optimal_grouping, window_counts
from .masking import (MASK_UNIT, check_mask, check_mask_ratio, num_visible_units,
                      random_unit_mask, unit_grid, upsample_mask)
from .sparse_conv import (DEFAULT_MODE as DEFAULT_SPARSE_CONV, SPARSE_CONV_MODES,
                          sparse_depthwise_conv)
from .windows import (GROUPING_POLICIES, LAYOUTS, WindowPlan, build_geometry, build_window_plan,
                      effective_window, layout_for_backend, relative_position_index,
                      window_labels)

__all__ = [
    'BACKENDS', 'flex_available', 'flex_window_attention', 'padded_window_attention',
    'resolve_backend', 'window_attention', 'StageGeometry', 'child_index', 'gather_children',
    'gather_tokens', 'neighbour_index', 'scatter_tokens', 'visible_coords',
    'algorithm1_grouping', 'grouping_cost', 'optimal_grouping', 'window_counts', 'MASK_UNIT',
    'check_mask', 'check_mask_ratio', 'num_visible_units', 'random_unit_mask', 'unit_grid',
    'upsample_mask', 'GROUPING_POLICIES', 'LAYOUTS', 'WindowPlan', 'build_geometry',
    'build_window_plan', 'effective_window', 'layout_for_backend', 'relative_position_index',
    'window_labels', 'DEFAULT_SPARSE_CONV', 'SPARSE_CONV_MODES', 'sparse_depthwise_conv'
]
