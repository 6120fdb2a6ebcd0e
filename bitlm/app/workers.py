"""Generation in worker processes, so that visitors generating at once use the cores side by side.

A generation is a loop of small steps, most of its time Python between torch calls, so two generations on
two threads of one process take turns on the GIL: measured on 2 cores, two at once took 2.1-2.4 × as long
as one, in two processes 1.07 × (`bench/app_load.py --scaling`, docs/app.md). `GenerateWorkers` keeps a
few spawned processes (one per core by default), each on one torch thread, and runs
`bitlm.app.generate_tab.generate` there: a request takes a free worker (or waits for one), sends the
visitor's `AppModel` the first time that worker sees it (pickled over the worker's own pipe; a worker keeps
the last `MODELS_KEPT`), and relays the streamed results. A model is known by its `token` (a random id
made with the `AppModel`), never by an address that could be reused, so one visitor's model never answers
another's request. The visitor's Stop sets the worker's stop flag, which the generation reads after every
chunk; a stream the client abandons is stopped the same way and drained before the worker is free again. A
worker that dies (killed, out of memory) ends its request with a message and is replaced.
"""
from __future__ import annotations

import logging
import multiprocessing as mp
import queue
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Any

log = logging.getLogger("bitlm.app")

MODELS_KEPT = 2           # models a worker keeps (the shipped one and the last visitor's, typically)
POLL_S = 0.05             # how often a relay checks the visitor's Stop and the worker's health


def _keep(models: OrderedDict, token: str, model: Any = None) -> None:
    """Mark `token` as just used in `models` (adding `model` if given), dropping the least recently used past
    MODELS_KEPT: the one rule by which a worker keeps its models and the parent tracks which it holds."""
    if model is not None or token not in models:
        models[token] = model
    models.move_to_end(token)
    while len(models) > MODELS_KEPT:
        models.popitem(last=False)


class WorkerLost(RuntimeError):
    """A worker process ended in the middle of a request (killed or out of memory)."""


def _serve(conn, stop) -> None:
    """A worker's loop: (token, pickled model or None, args) in, ("result", GenerateResult)… ("done", None)
    out; None, or the app's end (its pipe closes), ends it quietly."""
    import signal

    import torch

    from bitlm.app import generate_tab
    signal.signal(signal.SIGINT, signal.SIG_IGN)   # Ctrl-C is the app's to handle; its exit closes the pipe
    torch.set_num_threads(1)
    models: OrderedDict[str, Any] = OrderedDict()
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg is None:
            return
        token, model, args = msg
        _keep(models, token, model)
        try:
            for result in generate_tab.generate(models[token], *args, should_stop=stop.is_set):
                conn.send(("result", result))
        except (BrokenPipeError, EOFError):
            return                                   # the app has gone
        except Exception as e:  # generate turns input errors into results; anything else ends this request only
            conn.send(("error", f"{type(e).__name__}: {e}"))
            continue
        conn.send(("done", None))


class _Worker:
    def __init__(self, ctx) -> None:
        self.conn, child = ctx.Pipe()
        self.stop = ctx.Event()
        self.process = ctx.Process(target=_serve, args=(child, self.stop), daemon=True, name="bitlm-generate")
        self.process.start()
        child.close()
        self.tokens: OrderedDict[str, None] = OrderedDict()   # the models it holds (`_keep`, as _serve does)


class GenerateWorkers:
    """A pool of `n` generation processes (spawned, one torch thread each). Thread-safe: many requests at once
    share it, each holding one worker while it streams."""

    def __init__(self, n: int) -> None:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"the number of generation workers must be an int ≥ 1, got {n!r}")
        self._ctx = mp.get_context("spawn")   # no fork: the parent holds threads and torch state
        self._free: queue.Queue[_Worker] = queue.Queue()
        self._all: list[_Worker] = []
        self._lock = threading.Lock()
        for _ in range(n):
            self._add()

    def _add(self) -> None:
        worker = _Worker(self._ctx)
        with self._lock:
            self._all.append(worker)
        self._free.put(worker)

    def generate(self, app_model: Any, args: tuple, should_stop: Callable[[], bool]) -> Iterator[Any]:
        """`generate_tab.generate(app_model, *args, should_stop=should_stop)` in a worker: the same results, in
        order. Closing the iterator stops the generation. Raises `WorkerLost` if the worker dies meanwhile."""
        worker = self._free.get()
        clean = False
        try:
            worker.stop.clear()
            token = app_model.token
            fresh = token not in worker.tokens
            worker.conn.send((token, app_model if fresh else None, args))
            _keep(worker.tokens, token)
            while True:
                kind, value = self._next(worker, should_stop)
                if kind == "result":
                    yield value
                elif kind == "error":
                    clean = True
                    raise RuntimeError(value)
                else:
                    clean = True
                    return
        finally:
            if not clean:   # abandoned mid-stream (or the worker died): stop it and wait for its "done"
                clean = self._drain(worker)
            if clean:
                self._free.put(worker)
            else:
                self._replace(worker)

    def _next(self, worker: _Worker, should_stop: Callable[[], bool]) -> tuple[str, Any]:
        while True:
            if should_stop():
                worker.stop.set()
            if worker.conn.poll(POLL_S):
                break
            if not worker.process.is_alive():
                raise WorkerLost("the generation worker stopped unexpectedly")
        try:
            return worker.conn.recv()
        except (EOFError, OSError) as e:
            raise WorkerLost("the generation worker stopped unexpectedly") from e

    def _drain(self, worker: _Worker) -> bool:
        """Stop the worker's generation and read what it still sends; True once it is ready for another."""
        worker.stop.set()
        try:
            while True:
                kind, _ = self._next(worker, lambda: True)
                if kind in ("done", "error"):
                    return True
        except WorkerLost:
            return False

    def _replace(self, worker: _Worker) -> None:
        log.warning("a generation worker ended (exit code %s); starting another", worker.process.exitcode)
        with self._lock:
            if worker in self._all:
                self._all.remove(worker)
        worker.process.kill()
        self._add()

    def close(self) -> None:
        """End every worker (those busy are killed)."""
        with self._lock:
            workers, self._all = self._all, []
        for w in workers:
            try:
                w.conn.send(None)
            except OSError:
                pass
            w.process.join(timeout=2)
            if w.process.is_alive():
                w.process.kill()
