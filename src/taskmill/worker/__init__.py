"""The worker: consumer (fetch, leases, settle), executor (threads + event loop), supervisor (processes)."""

from taskmill.worker.consumer import Worker

__all__ = ["Worker"]
