"""Pure data: what alerts, incidents and audit records are. No I/O, no framework imports."""
