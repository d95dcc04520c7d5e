"""The durable job queue (``nnprobe_services.sequence.jobs``) is generic: importing every module of it loads
neither torch nor the language model."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

from nnprobe_services.sequence import jobs

PROBE = """
import importlib, sys
for name in sys.argv[1:]:
    importlib.import_module(name)
loaded = [m for m in sys.modules if m == "torch" or m.startswith(("torch.", "nnprobe_services.sequence.lm"))]
print(sorted(loaded))
"""


def test_the_job_queue_imports_without_torch_or_the_language_model():
    modules = [f"{jobs.__name__}.{m.name}" for m in pkgutil.iter_modules(jobs.__path__)]
    assert f"{jobs.__name__}.store" in modules and f"{jobs.__name__}.replica" in modules
    result = subprocess.run(
        [sys.executable, "-c", PROBE, *modules], capture_output=True, text=True, timeout=120, check=True
    )
    assert result.stdout.strip() == "[]", result.stdout
