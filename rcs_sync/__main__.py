"""`python -m rcs_sync` and the `rcs-sync` script: the early stop handler, then the CLI."""

from rcs_sync import early_stop, startup


def main(args: list[str] | None = None) -> None:
    """Install the early stop handler, then import and run the CLI on `args` (default:
    the command line)."""
    early_stop.install()
    with startup.loading():
        from rcs_sync.cli import main as cli_main  # noqa: PLC0415 - after the handler, on purpose

    cli_main(args)


if __name__ == "__main__":
    main()
