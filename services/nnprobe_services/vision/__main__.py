"""`python -m nnprobe_services.vision` runs the vision server."""

import sys

from nnprobe_services.server.service_main import main

sys.exit(main("vision"))
