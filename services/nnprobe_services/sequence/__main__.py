"""`python -m nnprobe_services.sequence` runs the sequence server."""

import sys

from nnprobe_services.server.service_main import main

sys.exit(main("sequence"))
