"""gunicorn settings for ca-service, read from the same CA_* settings as the service.

`ca-service serve` runs gunicorn with this file; to run gunicorn yourself:
    gunicorn -c config/gunicorn.conf.py ca_service.wsgi:app
"""

from ca_service.config import load_settings

_settings = load_settings()

bind = [_settings.bind]
workers = _settings.workers
# Threads let a worker keep idle keep-alive connections while another request signs.
worker_class = "gthread"
threads = 4
timeout = _settings.timeout
# On SIGTERM, workers finish the requests they hold for up to this long before exiting.
graceful_timeout = 30
keepalive = 5
# Request lines only: bodies (CSRs, keys) and headers (tokens) are never logged.
accesslog = "-"
errorlog = "-"
loglevel = _settings.log_level.lower()
proc_name = "ca-service"
