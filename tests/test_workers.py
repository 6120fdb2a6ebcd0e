"""Generation in worker processes (`bitlm.app.workers`): the same results as on the request's thread, each
visitor's own model, Stop, an abandoned stream, a worker that dies."""
import dataclasses
import os
import signal

import pytest
import torch

from bitlm.app import generate_tab
from bitlm.app.endpoints import Endpoints
from bitlm.app.visitors import SharedTrainer, Visitor
from bitlm.app.workers import GenerateWorkers, WorkerLost
from bitlm.model.transformer import BitTransformerLM

ARGS = ("Hello", "text", 60, 0.8, 5, True, "off", None)


@pytest.fixture(scope="module")
def workers():
    pool = GenerateWorkers(1)   # one worker: every request below meets the same process
    yield pool
    pool.close()


def final(results):
    *_, last = results
    return last


def test_a_worker_gives_what_the_request_thread_gives(tiny_model, workers):
    here = list(generate_tab.generate(tiny_model, *ARGS))
    there = list(workers.generate(tiny_model, ARGS, lambda: False))
    assert [r.bits for r in there] == [r.bits for r in here] and there[-1].text == here[-1].text
    assert there[-1].output_ratio == here[-1].output_ratio and torch.equal(there[-1].last["new_bits"],
                                                                          here[-1].last["new_bits"])


def test_each_visitors_model_answers_only_its_own_requests(tiny_model, workers):
    """A worker holds several models, told apart by their tokens: A's, B's and the shipped one alternate on
    one process, and each answers as it does on the request's thread."""
    torch.manual_seed(7)
    other = dataclasses.replace(tiny_model, model=BitTransformerLM(tiny_model.model.config).eval())
    assert other.token != tiny_model.token
    for model in (tiny_model, other, tiny_model, other):
        assert final(workers.generate(model, ARGS, lambda: False)).bits == final(generate_tab.generate(model, *ARGS)).bits


def test_stop_and_an_abandoned_stream_free_the_worker(tiny_model, workers):
    long = ("Hello", "text", 2000, 1.0, 1, False, "off", None)
    stopped = final(workers.generate(tiny_model, long, lambda: True))   # Stop pressed as it starts
    assert "Stopped: generated" in stopped.status and len(stopped.bits.split()) < 2000, stopped.status
    stream = workers.generate(tiny_model, long, lambda: False)
    next(stream)
    stream.close()                      # the visitor left: the worker stops and is free again at once
    assert "Generated 60 bytes" in final(workers.generate(tiny_model, ARGS, lambda: False)).status


def test_a_worker_that_dies_is_replaced_and_the_request_told(tiny_model, tmp_path):
    pool = GenerateWorkers(1)
    try:
        final(pool.generate(tiny_model, ARGS, lambda: False))
        stream = pool.generate(tiny_model, ("Hello", "text", 2000, 1.0, 1, False, "off", None), lambda: False)
        next(stream)
        os.kill(pool._all[0].process.pid, signal.SIGKILL)
        with pytest.raises(WorkerLost):
            list(stream)
        assert "Generated 60 bytes" in final(pool.generate(tiny_model, ARGS, lambda: False)).status  # a new worker
        api = Endpoints(tiny_model, SharedTrainer(tmp_path), pool)
        os.kill(pool._all[0].process.pid, signal.SIGKILL)
        pool._all[0].process.join()
        status = final(api.generate(*ARGS, visitor=Visitor()))[4]
        assert status.startswith("⚠️ The generation stopped") and "still running" in status, status
    finally:
        pool.close()
