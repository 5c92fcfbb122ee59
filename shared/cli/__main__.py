"""`python -m shared.cli`: the same command as the `mailrelay` script."""

from shared.cli.parser import main

raise SystemExit(main())
