"""How an idle Redis worker waits: it parks, and a publish hands it a message directly.

``wait`` runs ``park.lua``: if nothing is fetchable, the worker's park id is registered in each
queue's ``waiters`` and it blocks in ``BLPOP`` on its inboxes. A publish (or a retry, give-back or
dead-letter retry) that makes a message ready leases it to a parked worker in the same script and
pushes it onto that worker's inbox, so ``BLPOP`` returns with the message itself: one hop from
the producer's script to the worker, no notification and no fetch in between. The delivery waits
in a stash until the worker's next fetch, which returns it without a round trip.

Each thread that waits has its own park id (tests and embedders may run several consumers on one
broker, and a worker's fetch loop moves between its threads); any thread's fetch takes what was
handed to any of them. A worker killed while parked leaves at most one leased message in its inbox; its lease
expires and it is delivered again, as with any worker that dies holding a message. ``close`` gives
back whatever the inboxes and stashes still hold. A ``BLPOP`` whose reply is lost (the connection
dropped just as Redis popped a row) is not sent again: ``park.lua``'s ``recover`` finds what the park
was handed, through the note each hand-off leaves, and the worker takes it at once.
"""

from __future__ import annotations

import collections
import os
import threading
from collections.abc import Callable, Sequence
from typing import Any

from taskmill.brokers.base import Delivery
from taskmill.errors import BrokerUnavailable

__all__ = ["Parking"]

# BLPOP waits at most this share of the socket timeout: Redis may end a block up to ~0.1 s late,
# and a reply that outlives the socket's timeout is a connection error (a row it popped is then
# recovered by a second script call, as after any lost reply).
_SOCKET_SHARE = 0.5


class Parking:
    """The parking of one broker's waiting threads."""

    def __init__(
        self,
        run: Callable[[str, list[str], list[Any]], Any],
        client: Any,
        keys: Callable[[str], list[str]],
        give_back: Callable[[list[Delivery]], None],
    ):
        self._run = run  # runs one of the broker's Lua scripts
        self._client = client
        self._keys = keys
        self._give_back = give_back  # the broker's release
        self._local = threading.local()
        self._lock = threading.Lock()  # guards the stashes against leave() from another thread
        self._epoch = 0  # counts leave() calls: a delivery popped across one is given back at once
        # park id -> (the pid that made it, its stash, the queues it parked on)
        self._parks: dict[str, tuple[int, collections.deque[Delivery], set[str]]] = {}

    def park_id(self) -> str:
        """This thread's park id ('' before it first waits: then there is nothing to collect)."""
        if getattr(self._local, "pid", None) != os.getpid():
            return ""
        return str(self._local.cid)

    def _mine(self) -> tuple[str, collections.deque[Delivery], set[str]]:
        if getattr(self._local, "pid", None) != os.getpid():  # a new thread, or a forked child
            self._local.cid, self._local.pid = os.urandom(8).hex(), os.getpid()
        cid: str = self._local.cid
        park = self._parks.get(cid)
        if park is None:
            with self._lock:
                park = self._parks.setdefault(cid, (os.getpid(), collections.deque(), set()))
        return cid, park[1], park[2]

    def take(self, queues: Sequence[str], limit: int) -> list[Delivery]:
        """Up to ``limit`` deliveries handed to this process's parked threads for ``queues`` (leased
        already): the thread that fetches next may not be the one that waited."""
        pid = os.getpid()
        stashes = [stash for owner, stash, _ in list(self._parks.values()) if stash and owner == pid]
        if not stashes:
            return []  # the usual case, on every fetch: no lock
        taken: list[Delivery] = []
        with self._lock:
            for stash in stashes:
                for _ in range(len(stash)):
                    delivery = stash.popleft()
                    if len(taken) < limit and delivery.queue in queues:
                        taken.append(delivery)
                    else:
                        stash.append(delivery)
        return taken

    def keep(self, deliveries: Sequence[Delivery]) -> None:
        """Stash deliveries this thread holds but cannot take yet (its fetch got more than it asked)."""
        stash = self._mine()[1]
        with self._lock:
            stash.extend(deliveries)

    def wait(self, queues: Sequence[str], timeout: float, lease_ms: int) -> None:
        """Block up to ``timeout`` s, returning early when a fetch may find something (a handed
        delivery is then in the stash)."""
        epoch = self._epoch
        cid, stash, parked_on = self._mine()
        with self._lock:  # another thread's take() may be changing it
            if any(d.queue in queues for d in stash):
                return
        wait_s = min(timeout, self._client.timeout * _SOCKET_SHARE)
        if wait_s < 0.001:
            return
        keys = [key for queue in queues for key in self._keys(queue)]
        parked_on.update(queues)
        last, nonce = getattr(self._local, "nonce", ""), os.urandom(8).hex()  # the park drops what the last was handed
        wait_ms = int(self._run("park", keys, ["park", cid, nonce, int(lease_ms), int(wait_s * 1000), last]))
        self._local.nonce = nonce if wait_ms >= 1 else ""
        if wait_ms < 1:
            return  # something is fetchable now
        inboxes = {self._inbox(queue, cid): queue for queue in queues}
        try:
            reply = self._client.call_once("BLPOP", *inboxes, wait_ms / 1000)
        except BrokerUnavailable:  # Redis may have popped a row handed to this park, its reply lost
            found = self._run("park", keys, ["recover", cid, nonce])  # retried as usual; raises if Redis is gone
            reply = [self._inbox(queues[int(found[0]) - 1], cid).encode(), found[1]] if found else None
        if reply and reply[1]:
            delivery = _delivery(inboxes[reply[0].decode()], reply[1])
            with self._lock:
                if self._epoch == epoch:
                    stash.append(delivery)
                    return
            self._give_back([delivery])  # handed just before a leave() from another thread

    def leave(self) -> list[Delivery]:
        """Park no more, from any thread; what the inboxes and stashes still hold, to give back."""
        back: list[Delivery] = []
        with self._lock:  # the stashes are emptied under it, so no take() gets what is given back
            parks, self._parks = self._parks, {}
            self._epoch += 1
            for pid, stash, _ in parks.values():
                if pid == os.getpid():
                    back.extend(stash)
                    stash.clear()
        for cid, (pid, _, queues) in parks.items():
            if pid != os.getpid():
                continue  # a parent's park, seen in a forked child: the parent's to give back
            if queues:
                order = sorted(queues)
                rows = self._run("park", [key for queue in order for key in self._keys(queue)], ["leave", cid])
                back.extend(_delivery(order[int(index) - 1], row) for index, row in rows)
        return back

    def _inbox(self, queue: str, cid: str) -> str:
        return f"{self._keys(queue)[0][: -len('ready')]}inbox:{cid}"


def _delivery(queue: str, row: bytes) -> Delivery:
    message_id, token, priority, deliveries, body = row.split(b"\0", 4)
    return Delivery(message_id.decode(), queue, bytes(body), int(priority), int(deliveries), token.decode())
