"""`rcs-sync run`: the schedule, signals, systemd, metrics, and the processes each pass runs in."""
