from .cell_recon_head import CellReconstructionHead
from .unit_recon_head import UnitReconstructionHead

__all__ = ['CellReconstructionHead', 'UnitReconstructionHead']
