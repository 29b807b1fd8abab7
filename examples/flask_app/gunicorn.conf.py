"""gunicorn settings for the Flask example.

    gunicorn -c examples/flask_app/gunicorn.conf.py --chdir examples/flask_app app:app

Everything here can be overridden on the command line (``-w 4 -k gthread --threads 8 -b 0.0.0.0:8000``).
"""

from __future__ import annotations

import os
from typing import Any

bind = os.environ.get("BIND", "127.0.0.1:8000")
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
worker_class = "gthread"
threads = 4


def child_exit(server: Any, worker: Any) -> None:
    # With PROMETHEUS_MULTIPROC_DIR set, /metrics adds up every worker; forget the live gauges of a dead one.
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from resilient.prometheus import mark_process_dead

        mark_process_dead(worker.pid)


def worker_exit(server: Any, worker: Any) -> None:
    # WSGI has no lifespan: close the provider client, the pipeline and the rate limits' store here.
    extensions = getattr(worker.wsgi, "extensions", {})  # worker.wsgi: the Flask app
    if "example.provider" in extensions:
        extensions["example.provider"].close()
    if "resilient" in extensions:
        extensions["resilient"].close()
