"""`python -m rcs_sync`: how the daemon starts each pass's child process."""

from rcs_sync.cli import main

main()
