"""The sparse trick in one place: masks, window plans and grouping, packed attention, merging."""
from .attention import (BACKENDS, flex_available, flex_window_attention,
                        padded_window_attention, resolve_backend, window_attention)
from .grouping import algorithm1_grouping, grouping_cost, optimal_grouping, window_counts
from .masking import (MASK_UNIT, check_mask, check_mask_ratio, num_visible_units,
                      random_unit_mask, unit_grid, upsample_mask)
from .windows import (GROUPING_POLICIES, StageGeometry, WindowPlan, build_geometry,
                      build_window_plan, effective_window, gather_merge, merge_children,
                      relative_position_index, window_labels)

__all__ = [
    'BACKENDS', 'flex_available', 'flex_window_attention', 'padded_window_attention',
    'resolve_backend', 'window_attention', 'algorithm1_grouping', 'grouping_cost',
    'optimal_grouping', 'window_counts', 'MASK_UNIT', 'check_mask', 'check_mask_ratio',
    'num_visible_units', 'random_unit_mask', 'unit_grid', 'upsample_mask', 'GROUPING_POLICIES',
    'StageGeometry', 'WindowPlan', 'build_geometry', 'build_window_plan', 'effective_window',
    'gather_merge', 'merge_children', 'relative_position_index', 'window_labels'
]
