"""pika driven by the daemon's own selector loop: no loop of pika's, and no thread but a name's lookup.

pika's `SelectConnection` takes a custom I/O loop (`custom_ioloop`): an object with pika's
`AbstractSelectorIOLoop` methods, which pika wraps in its own services adapter (socket connect, stream
transport). `AmqpLoop` is that object over a selector the daemon owns. pika's descriptors are registered in
that selector with the daemons' convention (a key's data is a callback taking the selector mask), so the
daemon's `select()` runs pika's socket I/O; pika's timers (heartbeats, connect timeouts, our reconnects) and
deferred callbacks are answered through `deadline()`, which the daemon's step folds into its select timeout,
and `run_due(now)`, which the step calls after selecting:

    timeout = min(own_timeout, loop.timeout(now))
    daemon.select(timeout)                 # pika's socket callbacks: frames, confirms, closes
    loop.run_due(time.monotonic())         # pika's timers and deferred callbacks

pika 1.2 resolves every host name on a new `threading.Timer` thread, even an address literal, and lets an
address whose socket cannot be made raise out of the loop; `services()` wraps the loop in an adapter that
answers an address literal at once, resolves a name on a thread of its own at each attempt (a slow DNS never
stalls the daemon's loop, and a broker that moved is followed), and drops the addresses of a family this process
may not open (a unit without the network: the attempt fails, and is retried, as a failed lookup is).
"""

from __future__ import annotations

import errno
import heapq
import ipaddress
import itertools
import selectors
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from pika.adapters.utils import nbio_interface
from pika.adapters.utils.selector_ioloop_adapter import SelectorIOServicesAdapter

Callback = Callable[[], None]
LOOKUP_POLL = 0.05  # seconds between looks whether a name's lookup on its thread has ended


class Timer:
    """One pending call_later; cancelled by dropping its callback (the heap forgets it lazily)."""

    __slots__ = ("callback", "deadline", "seq")

    def __init__(self, deadline: float, seq: int, callback: Callback | None) -> None:
        self.deadline, self.seq, self.callback = deadline, seq, callback

    def __lt__(self, other: Timer) -> bool:
        return (self.deadline, self.seq) < (other.deadline, other.seq)


class AmqpLoop:
    """pika's AbstractSelectorIOLoop over a selector the daemon owns (see the module's docstring)."""

    READ = 0x01  # pika's event bits, mapped to the selector's below
    WRITE = 0x04
    ERROR = 0x08  # pika ORs it into WRITE; a selector reports errors as readiness

    def __init__(self, sel: selectors.BaseSelector, clock: Callable[[], float] = time.monotonic) -> None:
        self.sel, self.clock = sel, clock
        self._timers: list[Timer] = []
        self._seq = itertools.count()
        self._soon: deque[Callback] = deque()  # add_callback's: run at the next run_due
        self._handlers: dict[int, Callable[[int, int], None]] = {}

    # ---- what the daemon's loop calls ------------------------------------

    def deadline(self) -> float | None:
        """When run_due next has work (on the loop's clock): now with callbacks queued; None with nothing at all."""
        if self._soon:
            return self.clock()
        while self._timers and self._timers[0].callback is None:
            heapq.heappop(self._timers)  # cancelled
        return self._timers[0].deadline if self._timers else None

    def timeout(self, now: float, longest: float | None = None) -> float | None:
        """Seconds a select may wait for pika's sake, at most `longest`."""
        due = self.deadline()
        wait = None if due is None else max(0.0, due - now)
        if longest is not None:
            wait = longest if wait is None else min(wait, longest)
        return wait

    def run_due(self, now: float) -> int:
        """Run the deferred callbacks, then the timers due by `now`; how many ran."""
        ran = 0
        for _ in range(len(self._soon)):  # not those they add: those wait for the next step
            self._soon.popleft()()
            ran += 1
        while self._timers and self._timers[0].deadline <= now:
            timer = heapq.heappop(self._timers)
            callback, timer.callback = timer.callback, None
            if callback is not None:
                callback()
                ran += 1
        return ran

    def step(self, longest: float) -> None:
        """One step of a loop that has nothing else to do (tests, the bench): select, then run what is due."""
        for key, mask in self.sel.select(self.timeout(self.clock(), longest)):
            key.data(mask)
        self.run_due(self.clock())

    def services(self) -> nbio_interface.AbstractIOServices:
        """What to pass as pika's custom_ioloop: this loop with tq's lookups (Resolver)."""
        return Resolver(self)

    # ---- pika's AbstractSelectorIOLoop -----------------------------------

    def call_later(self, delay: float, callback: Callback) -> Timer:
        timer = Timer(self.clock() + delay, next(self._seq), callback)
        heapq.heappush(self._timers, timer)
        return timer

    def remove_timeout(self, timeout_handle: Timer) -> None:
        timeout_handle.callback = None

    def add_callback(self, callback: Callback) -> None:
        """Run `callback` at the next run_due. Nothing here runs on another thread, so no wake-up is needed."""
        self._soon.append(callback)

    def add_handler(self, fd: int, handler: Callable[[int, int], None], events: int) -> None:
        self._handlers[fd] = handler
        self.sel.register(fd, self._mask(events), self._on_ready(fd))

    def update_handler(self, fd: int, events: int) -> None:
        self.sel.modify(fd, self._mask(events), self._on_ready(fd))

    def remove_handler(self, fd: int) -> None:
        self._handlers.pop(fd, None)
        try:
            self.sel.unregister(fd)
        except (KeyError, ValueError):
            pass

    def start(self) -> None:
        raise RuntimeError("AmqpLoop runs inside the daemon's loop: call run_due from its step")

    def stop(self) -> None:
        """Nothing to stop: the daemon's loop is not pika's."""

    def close(self) -> None:
        """The selector is the daemon's: it closes it."""

    def _mask(self, events: int) -> int:
        read = selectors.EVENT_READ if events & self.READ else 0
        return read | (selectors.EVENT_WRITE if events & (self.WRITE | self.ERROR) else 0)

    def _on_ready(self, fd: int) -> Callable[[int], None]:
        def on_ready(mask: int) -> None:
            handler = self._handlers.get(fd)
            if handler is not None:  # None: removed by an earlier callback of the same select
                handler(fd, (self.READ if mask & selectors.EVENT_READ else 0)
                        | (self.WRITE if mask & selectors.EVENT_WRITE else 0))
        return on_ready


class _Resolved(nbio_interface.AbstractIOReference):  # type: ignore[misc]  # pika is untyped
    """The handle of an inline resolution; cancelling it drops the answer not yet delivered."""

    def __init__(self) -> None:
        self.cancelled = False

    def cancel(self) -> bool:
        self.cancelled = True
        return True


class Resolver(SelectorIOServicesAdapter):  # type: ignore[misc]  # pika is untyped
    """pika's services over AmqpLoop, with the lookups described in the module's docstring. The answer (the
    addresses, or the OSError that says why there are none) is delivered from the loop's run_due."""

    def __init__(self, loop: AmqpLoop) -> None:
        super().__init__(loop)
        self.tq_loop = loop

    def getaddrinfo(self, host: str, port: int, on_done: Callable[[Any], None], family: int = 0,
                    socktype: int = 0, proto: int = 0, flags: int = 0) -> _Resolved:
        handle = _Resolved()
        found: list[Any] = []

        def deliver() -> None:
            if handle.cancelled:
                return
            if not found:  # (the thread is still asking)
                self.tq_loop.call_later(LOOKUP_POLL, deliver)
                return
            on_done(found[0])

        def ask() -> None:
            found.append(lookup(host, port, family, socktype, proto, flags))

        if _literal(host):
            ask()
            self.tq_loop.add_callback(deliver)
        else:
            threading.Thread(target=ask, name="tq-broker-lookup", daemon=True).start()
            self.tq_loop.call_later(LOOKUP_POLL, deliver)
        return handle


def lookup(host: str, port: int, family: int = 0, socktype: int = 0, proto: int = 0,
           flags: int = 0) -> list[Any] | OSError:
    """getaddrinfo's addresses of a family this process can open a socket of, or why there are none."""
    try:
        found = socket.getaddrinfo(host, port, family, socktype, proto, flags)
    except OSError as e:
        return e
    refused: OSError | None = None
    usable = []
    for info in found:
        try:
            socket.socket(info[0], info[1], info[2]).close()
        except OSError as e:
            refused = e
            continue
        usable.append(info)
    if usable or refused is None:
        return usable
    return OSError(refused.errno or errno.EAFNOSUPPORT, refused.strerror or "address family not supported")


def _literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
