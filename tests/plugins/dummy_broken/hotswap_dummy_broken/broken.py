"""Backend `broken`: its vendor SDK is missing, so importing this module raises."""

raise ImportError("vendor SDK libfoo.so not found")
