"""``python -m exporter.simulator``."""

from exporter.simulator.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
