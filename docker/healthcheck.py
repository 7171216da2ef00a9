"""The image's HEALTHCHECK: exit 0 when /v2/health/ready answers 200 (health needs no token).

The port is HOTSWAP_SERVER__PORT when set, else 8000 (the image config's); a mounted config
that moves the port should set that variable too.
"""

import os
import sys
import urllib.request

port = os.environ.get("HOTSWAP_SERVER__PORT", "8000")
try:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=2) as response:
        sys.exit(0 if response.status == 200 else 1)
except OSError:
    sys.exit(1)
