"""The web wing: serving a WSGI app over HTTP(S), hardened, as Prometheus exporters do.

It knows nothing of RealtimeKit; it is this project's counterpart of Go's exporter-toolkit:

- :mod:`~exporter.web.flags`: the ``--web.*`` flags every exporter shares;
- :mod:`~exporter.web.listen`: ``--web.listen-address`` values, systemd's sockets;
- :mod:`~exporter.web.config`: the web config file's format (``--web.config.file``), checked;
- :mod:`~exporter.web.tls`: the SSL context of ``tls_server_config``;
- :mod:`~exporter.web.auth`: basic auth against bcrypt hashes;
- :mod:`~exporter.web.security`: the web config in force (re-read when its files change) and
  :func:`~exporter.web.security.protect`, which wraps an app with its headers and basic auth;
- :mod:`~exporter.web.server`: the event-loop-and-workers HTTP server and ``serve``;
  :mod:`~exporter.web.conn` reads a request in the event loop, :mod:`~exporter.web.handler`
  answers it in a worker.

Imports run one way: ``server`` → ``conn`` → ``handler``; ``server`` → ``security`` →
``tls``/``auth`` → ``config``; below them only :mod:`exporter.errors`, :mod:`exporter.files`
and :mod:`exporter.logs`.
"""
