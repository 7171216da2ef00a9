"""Text generation: continuous batching over a torch causal LM (see engine.py)."""
