"""``python -m ingest.cli``: the ``iot-ingest`` command."""

from ingest.cli.main import main

raise SystemExit(main())
