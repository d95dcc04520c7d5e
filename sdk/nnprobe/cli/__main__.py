import sys

from nnprobe.cli import main

sys.exit(main())
