"""realtimekit-exporter: a Prometheus exporter for Cloudflare RealtimeKit meetings."""

__version__ = "0.1.0"
