"""Reading ahead in background threads, so that the network does not wait for JPEG or video
decoding: OpenCV's decoders release the GIL, so threads decode while the forward pass runs."""

import concurrent.futures
import os
import queue
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


def read_ahead(
    items: Iterable[Item], read: Callable[[Item], Result], workers: Optional[int] = None, ahead: int = 16
) -> Iterator[Tuple[Item, Result]]:
    """``(item, read(item))`` in the order of ``items``, with up to ``ahead`` reads running
    or done in ``workers`` threads before they are asked for. An exception of ``read`` is
    raised when its item's turn comes (the reads after it are then cancelled)."""
    workers = workers or default_workers()
    with concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="retinaface-read") as pool:
        pending = []
        iterator = iter(items)
        try:
            for item in iterator:
                pending.append((item, pool.submit(read, item)))
                if len(pending) > ahead:
                    item, future = pending.pop(0)
                    yield item, future.result()
            while pending:
                item, future = pending.pop(0)
                yield item, future.result()
        finally:
            for _, future in pending:
                future.cancel()


_DONE = object()


def produce_ahead(produce: Iterator[Result], ahead: int = 64) -> Iterator[Result]:
    """The items of ``produce`` (a sequential source such as a video's frames), made in
    one background thread up to ``ahead`` items before they are asked for. An exception
    in the source is raised here, in order; closing the iterator stops the thread."""
    buffer: "queue.Queue" = queue.Queue(maxsize=max(1, ahead))
    stop = threading.Event()

    def run():
        try:
            for item in produce:
                while not stop.is_set():
                    try:
                        buffer.put((item, None), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            buffer.put((_DONE, None))
        except BaseException as error:  # handed to the consumer
            buffer.put((_DONE, error))

    thread = threading.Thread(target=run, name="retinaface-produce", daemon=True)
    thread.start()
    try:
        while True:
            item, error = buffer.get()
            if item is _DONE:
                if error is not None:
                    raise error
                return
            yield item
    finally:
        stop.set()
        while thread.is_alive():
            try:
                buffer.get_nowait()
            except queue.Empty:
                thread.join(0.05)
