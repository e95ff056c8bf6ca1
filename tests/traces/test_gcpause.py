"""The writer's collector pause: nests across threads, restores what it found."""

import gc
import threading

from traces.gcpause import paused_gc


def test_pause_nests_across_threads_and_restores_the_collector():
    assert gc.isenabled()
    inside, release = threading.Event(), threading.Event()

    def other_writer():
        with paused_gc():
            inside.set()
            release.wait(10)

    thread = threading.Thread(target=other_writer)
    with paused_gc():
        assert not gc.isenabled()
        thread.start()
        assert inside.wait(10)
    # this pause ended, the other thread's has not: the collector stays off
    assert not gc.isenabled()
    release.set()
    thread.join(10)
    assert gc.isenabled()


def test_pause_never_turns_on_a_collector_that_was_off():
    gc.disable()
    try:
        with paused_gc():
            assert not gc.isenabled()
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_pause_ends_on_an_exception():
    try:
        with paused_gc():
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    assert gc.isenabled()
