"""tq: a durable job queue for one Linux host, run by systemd, over POSIX message queues."""

__version__ = "0.1.0"
