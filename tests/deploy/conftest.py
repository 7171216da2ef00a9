"""Ray reads its environment when it is first imported: the loopback-only settings go first."""

from __future__ import annotations

import os

from hotswap.deploy.ray import LOCAL_RAY_ENV

for _key, _value in LOCAL_RAY_ENV.items():
    os.environ.setdefault(_key, _value)
