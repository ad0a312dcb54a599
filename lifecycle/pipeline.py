"""Compatibility entry point for run scripts that name the pipeline by its old module path.

Labs made by minimind 0.1.0 before the lifecycle was split into rooms (commit 2c3e86f and
earlier) hold a copy of `templates/run.sh.j2` and run scripts that end with

    exec "$PY" -m lifecycle.pipeline --run-dir "$RUN_DIR" ${MINIMIND_RESUME:+--resume}

A lab's template copy wins over the package's, so new experiments in such a lab, and
`resume` of their runs, still call this path; it forwards to `lifecycle.running.pipeline`.
"""

from __future__ import annotations

import sys

from lifecycle.running.pipeline import main

if __name__ == "__main__":
    sys.exit(main())
