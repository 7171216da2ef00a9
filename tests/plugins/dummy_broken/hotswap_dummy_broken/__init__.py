"""Test plugin whose backend modules fail at import; this package itself imports fine."""
