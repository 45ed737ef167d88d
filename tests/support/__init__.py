"""Helpers shared by the tests and the benchmarks (``bench/``), one module a concern:

- ``api``: the test token, fake API answers (``reply``, ``replies``, ``answering``), the client
  tests' meeting, a config for a simulator (``sim_config``), a Discovery not yet started;
- ``clock``: ``FakeTime``, the one fake clock (monotonic, wall, asyncio sleep, ``advance``);
- ``deploy``: the deployment files' paths and readers, shared by the deploy, HA and shard tests;
- ``metrics``: reading an exposition (``parse_metrics``, ``value``) and ``max_in_window``;
- ``page``: ``StatusPage``, the status page as a browser builds it (tags, meeting rows);
- ``pki``: certificates made with ``cryptography`` (a CA, server and client pairs) and web configs;
- ``ports``: ``free_port``;
- ``process``: child processes with a log (``Process``, ``running``, ``stop_process``), the real
  exporter (``ExporterProcess``, also the benchmarks'), ``wait_for``;
- ``redis``: ``RedisServer``, a real ``redis-server`` on loopback;
- ``simulator``: the simulator's endpoint tests' API client, webhook receiver and fixture factory;
- ``tools``: ``require_tool`` and friends: a missing tool skips, or fails when CI requires it.

Fixtures live in ``tests/conftest.py``; no test module imports another test module.
"""
