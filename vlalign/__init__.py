"""vlalign: align vision encoders with LLMs on one model, one loop, one config switch."""

__version__ = "0.1.0"
