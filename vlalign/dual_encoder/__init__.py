"""CLIP-like dual encoders: one interface over a small offline LiT-style model and HF CLIP / SigLIP.

The heavy imports (transformers, the towers) happen when a model is built, not on import.
"""

from vlalign.dual_encoder.base import DualEncoder
from vlalign.dual_encoder.checkpoint import load_dual_encoder, save_dual_encoder
from vlalign.dual_encoder.heads import ProjectionHeads
from vlalign.dual_encoder.hf import HFDualEncoder
from vlalign.dual_encoder.packaged import PackagedDualEncoder
from vlalign.dual_encoder.probe import patch_word_similarity
from vlalign.dual_encoder.train import train_dual_encoder

__all__ = ["DualEncoder", "HFDualEncoder", "PackagedDualEncoder", "ProjectionHeads", "load_dual_encoder",
           "patch_word_similarity", "save_dual_encoder", "train_dual_encoder"]
