"""`python -m nnprobe_services.attention` runs the attention server."""

import sys

from nnprobe_services.server.service_main import main

sys.exit(main("attention"))
