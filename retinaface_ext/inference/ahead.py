"""Reading ahead in background threads, so that the network does not wait for JPEG or video
decoding: OpenCV's decoders release the GIL, so threads decode while the forward pass runs."""

import collections
import concurrent.futures
import os
import threading
from typing import Callable, Iterable, Iterator, Optional, Tuple, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


def default_workers() -> int:
    """Decoding threads: the CPUs this process may use, at most 4."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(4, cpus))


#: Decoded images or frames waiting for the detector take at most about this many bytes.
AHEAD_BYTES = 512 << 20


def _nbytes(future) -> int:
    if not future.done() or future.cancelled() or future.exception() is not None:
        return 0
    return int(getattr(future.result(), "nbytes", 0))


def read_ahead(
    items: Iterable[Item],
    read: Callable[[Item], Result],
    workers: Optional[int] = None,
    ahead: int = 16,
    max_bytes: int = AHEAD_BYTES,
) -> Iterator[Tuple[Item, Result]]:
    """``(item, read(item))`` in the order of ``items``, with up to ``ahead`` reads running
    (at most ``workers`` at once, in threads) or done before they are asked for, and no
    new read started while the finished ones hold more than ``max_bytes`` (their
    ``nbytes``). An exception of ``read`` is raised when its item's turn comes (the reads
    after it are then cancelled)."""
    workers = workers or default_workers()
    with concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="retinaface-read") as pool:
        pending = []
        iterator = iter(items)
        try:
            for item in iterator:
                while pending:
                    if len(pending) >= ahead or sum(_nbytes(f) for _, f in pending) > max_bytes:
                        first, future = pending.pop(0)
                        yield first, future.result()
                        continue
                    running = [f for _, f in pending if not f.done()]
                    if len(running) < workers:
                        break
                    concurrent.futures.wait(running, return_when=concurrent.futures.FIRST_COMPLETED)
                pending.append((item, pool.submit(read, item)))
            while pending:
                item, future = pending.pop(0)
                yield item, future.result()
        finally:
            for _, future in pending:
                future.cancel()


def produce_ahead(
    produce: Iterator[Result], ahead: int = 64, max_bytes: Optional[int] = None, size_of: Callable[[Result], int] = len
) -> Iterator[Result]:
    """The items of ``produce`` (a sequential source such as a video's frames), made in
    one background thread up to ``ahead`` items before they are asked for and, with
    ``max_bytes``, no more than that many bytes of them (``size_of`` an item; one item
    is always let through). An exception in the source is raised here, in order;
    closing the iterator stops the thread."""
    ready = threading.Condition()
    waiting: "collections.deque" = collections.deque()  # (item, bytes)
    state = {"bytes": 0, "done": False, "error": None, "stop": False}

    def full(size: int) -> bool:
        over = max_bytes is not None and state["bytes"] + size > max_bytes
        return bool(waiting) and (len(waiting) >= ahead or over)

    def run():
        try:
            for item in produce:
                size = size_of(item) if max_bytes is not None else 0
                with ready:
                    while full(size) and not state["stop"]:
                        ready.wait(0.1)
                    if state["stop"]:
                        return
                    waiting.append((item, size))
                    state["bytes"] += size
                    ready.notify_all()
        except BaseException as error:  # handed to the consumer
            state["error"] = error
        with ready:
            state["done"] = True
            ready.notify_all()

    thread = threading.Thread(target=run, name="retinaface-produce", daemon=True)
    thread.start()
    try:
        while True:
            with ready:
                while not waiting and not state["done"]:
                    ready.wait()
                if not waiting:
                    if state["error"] is not None:
                        raise state["error"]
                    return
                item, size = waiting.popleft()
                state["bytes"] -= size
                ready.notify_all()
            yield item
    finally:
        with ready:
            state["stop"] = True
            waiting.clear()
            ready.notify_all()
        thread.join()
