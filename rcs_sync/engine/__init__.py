"""One pass over one stream and scope: plan windows, fetch each, commit it with its bookkeeping."""
