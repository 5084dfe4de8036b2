"""gunicorn settings for ca-service, read from the same CA_* settings as the service.

`ca-service serve` runs gunicorn with this module, which ships inside the package; to run
gunicorn yourself:
    gunicorn -c python:ca_service.gunicorn_conf ca_service.wsgi:app
gunicorn reads every module-level name that is one of its settings and ignores the rest.
"""

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from ca_service.config import load_settings
from ca_service.web import gunicorn_worker as _worker
from ca_service.web import server_hooks as _hooks

_settings = load_settings()
# A body over the limit: 413 and Connection: close. gunicorn's own 400/414/431: problem+json.
pre_request = _hooks.closing_oversized_bodies(_settings.max_body_bytes)
_hooks.install_problem_error_pages()

bind = [_settings.bind]
workers = _settings.worker_count
# Threads let a worker keep idle keep-alive connections while another request signs; the
# balanced variant leaves a share of new connections to the other workers
# (ca_service/web/gunicorn_worker.py).
worker_class = (
    "ca_service.web.gunicorn_worker.BalancedThreadWorker" if _worker.supported() else "gthread"
)
threads = _settings.threads
timeout = _settings.timeout
# On SIGTERM, workers finish the requests they hold for up to this long before exiting.
graceful_timeout = 30
keepalive = 5
# Request lines only: bodies (CSRs, keys) and headers (tokens) are never logged.
accesslog = "-"
errorlog = "-"
loglevel = _settings.log_level.lower()
if _settings.log_format == "json":
    # Error and access log as JSON lines, the access line with request id, actor and outcome.
    logger_class = "ca_service.web.gunicorn_logging.JsonLogger"
proc_name = "ca-service"
# No control socket (gunicorn 25.1+): its default, ~/.gunicorn/gunicorn.ctl or
# $XDG_RUNTIME_DIR/gunicorn.ctl, is one path for every instance a user runs, so a second server
# takes it over and stopping either removes it for both. ca-service has no use for it; stop or
# reload a server with signals to its PID. Older gunicorn ignores the unknown name.
control_socket_disable = True

if _settings.tls:
    # HTTPS: CA_TLS=true (`ca-service serve --tls` passes the same file as --certfile, which
    # gunicorn reads after this module). The certificate bundle exists before gunicorn starts
    # (serve issues it); each worker then builds its contexts from it and checks for renewal in
    # a thread. See ca_service/tls/serving.py. The file holds the encrypted key, the leaf and
    # intermediates.
    from ca_service.tls.serving import bundle_path as _bundle_path

    certfile = str(_bundle_path(_settings))


def _serves_our_bundle(config: Any) -> bool:
    """TLS with this service's own certificate bundle, whichever way it was configured."""
    from ca_service.tls.serving import bundle_path

    return bool(config.certfile) and Path(config.certfile) == bundle_path(_settings)


def ssl_context(config: Any, default_ssl_context_factory: Any) -> Any:
    """Called by gunicorn per connection: the newest context of this worker."""
    if not _serves_our_bundle(config):
        return default_ssl_context_factory()
    from ca_service.tls import serving

    return serving.installed().context()


def post_worker_init(worker: Any) -> None:
    if _serves_our_bundle(worker.cfg):
        from ca_service.tls import serving

        serving.start_worker(worker.wsgi, _settings)


# Prometheus multiprocess mode: each worker writes its metric values to files in one directory
# that every worker's /metrics reads and adds up. The directory is this server's own (made
# fresh, 0700, when the master starts, so no value of an earlier run or of another server on
# the host is counted), set in the environment before any worker starts (prometheus_client
# chooses its mode when first imported, in the worker), and removed when the master exits.
_METRICS_DIR = "PROMETHEUS_MULTIPROC_DIR"


def on_starting(server: Any) -> None:
    os.environ[_METRICS_DIR] = tempfile.mkdtemp(prefix="ca-service-metrics-")


def child_exit(server: Any, worker: Any) -> None:
    """A worker's live gauges (its pool) leave the sums; its counters stay counted. (Not
    through ca_service.metrics, whose import would give the master value files of its own.)"""
    directory = os.environ.get(_METRICS_DIR)
    if directory:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid, directory)  # type: ignore[no-untyped-call]


def on_exit(server: Any) -> None:
    directory = os.environ.get(_METRICS_DIR)
    if directory and Path(directory).name.startswith("ca-service-metrics-"):
        shutil.rmtree(directory, ignore_errors=True)
