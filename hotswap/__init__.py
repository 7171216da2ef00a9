"""hotswap: one inference endpoint, any accelerator."""

__version__ = "0.1.0"
