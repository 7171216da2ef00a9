"""Backend `exits`: like torch_npu without CANN, importing this module calls sys.exit(1)."""

import sys

sys.exit(1)
