from .unit_recon_head import UnitReconstructionHead

__all__ = ['UnitReconstructionHead']
