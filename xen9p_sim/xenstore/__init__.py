"""A xenstored on one machine: the real xenstore wire protocol over a Unix socket (`xen9psim xenstored`)."""
