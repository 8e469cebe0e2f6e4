"""The provider's HTTP API: requests, retries, and response bodies spooled to disk in parts."""
