"""pika driven by the daemon's own selector loop: no thread, no loop of pika's.

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

pika 1.2 resolves every host name on a new `threading.Timer` thread, even an address literal; `services()`
wraps the loop in an adapter that resolves inline instead. tq hands pika the address resolved when the
daemon loaded its configuration (transport/amqp.py), so inline resolution never waits on DNS.
"""

from __future__ import annotations

import heapq
import itertools
import selectors
import socket
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from pika.adapters.utils import nbio_interface
from pika.adapters.utils.selector_ioloop_adapter import SelectorIOServicesAdapter

Callback = Callable[[], None]


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
        """What to pass as pika's custom_ioloop: this loop with name resolution inline (no thread)."""
        return InlineResolver(self)

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


class InlineResolver(SelectorIOServicesAdapter):  # type: ignore[misc]  # pika is untyped
    """pika's services over AmqpLoop, resolving inline instead of on a thread (instant for an address literal,
    which is what tq hands it). The answer is delivered at the next run_due, as pika expects it later."""

    def __init__(self, loop: AmqpLoop) -> None:
        super().__init__(loop)
        self.tq_loop = loop

    def getaddrinfo(self, host: str, port: int, on_done: Callable[[Any], None], family: int = 0,
                    socktype: int = 0, proto: int = 0, flags: int = 0) -> _Resolved:
        handle = _Resolved()
        result: Any
        try:
            result = socket.getaddrinfo(host, port, family, socktype, proto, flags)
        except OSError as e:
            result = e

        def deliver() -> None:
            if not handle.cancelled:
                on_done(result)
        self.tq_loop.add_callback(deliver)
        return handle
