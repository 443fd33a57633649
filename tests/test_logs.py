"""rnnimp.logs: TensorFlow's start-up chatter filtered from fd 2, everything else let through; rnnimp's warning lines."""

from __future__ import annotations

import logging
import os
import sys

from rnnimp import logs

CHATTER = [
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    "I0000 00:00:1795807633.781077    5043 port.cc:153] oneDNN custom operations are on. You may see slightly "
    "different numerical results due to floating-point round-off errors from different computation orders. "
    "To turn them off, set the environment variable `TF_ENABLE_ONEDNN_OPTS=0`.",
    "I0000 00:00:1795807710.531018    7385 cpu_feature_guard.cc:227] This TensorFlow binary is optimized to use "
    "available CPU instructions in performance-critical operations.",
    "To enable the following instructions: AVX2 AVX512F FMA, in other operations, rebuild TensorFlow with the "
    "appropriate compiler flags.",
    "2025-09-17 14:44:05.157831: I external/local_xla/xla/tsl/cuda/cudart_stub.cc:32] Could not find cuda drivers",
]
KEPT = [
    "E0000 00:00:1758131045.203198 3722035 cuda_dnn.cc:8579] Unable to register cuDNN factory",
    "F0000 00:00:1758131045.203198 3722035 check.cc:1] Check failed: x",
    "Traceback (most recent call last):",
    "ImportError: libfoo.so: cannot open shared object file",
    "rnnimp: warning: a worker was lost",
]


def test_chatter_patterns_match_tensorflows_notices_only():
    assert all(logs.is_chatter(line) for line in CHATTER)
    assert not any(logs.is_chatter(line) for line in KEPT)


def test_filtered_stderr_drops_chatter_written_to_fd_2_and_replays_the_rest(capfd):
    with logs.filtered_stderr():
        os.write(2, ("\n".join(CHATTER + KEPT) + "\n").encode())  # as C++ code writes: below Python
        print("a Python line", file=sys.stderr)
    lines = capfd.readouterr().err.splitlines()
    assert [line for line in lines if line != "a Python line"] == KEPT
    assert "a Python line" in lines  # (under capfd, Python's sys.stderr bypasses fd 2)


def test_filtered_stderr_lets_everything_through_when_disabled(capfd):
    with logs.filtered_stderr(enabled=False):
        os.write(2, (CHATTER[1] + "\n").encode())
    assert capfd.readouterr().err == CHATTER[1] + "\n"


def test_filtered_stderr_restores_fd_2_after_an_exception(capfd):
    try:
        with logs.filtered_stderr():
            os.write(2, b"kept before the error\n")
            raise ImportError("no tensorflow")
    except ImportError:
        pass
    os.write(2, b"after\n")
    assert capfd.readouterr().err == "kept before the error\nafter\n"


def test_rnnimp_warnings_are_one_prefixed_line(monkeypatch, capsys):
    monkeypatch.setenv(logs.VERBOSE_ENV, "")
    logger = logging.getLogger("rnnimp")
    saved = list(logger.handlers), logger.propagate, logger.level
    logger.handlers = []
    try:
        logs.setup()
        logging.getLogger("rnnimp.distributed").warning("a worker was lost (%s)", "detail")
        logging.getLogger("rnnimp.distributed").info("not shown unless verbose")
        assert capsys.readouterr().err == "rnnimp: warning: a worker was lost (detail)\n"
        monkeypatch.setenv(logs.VERBOSE_ENV, "1")
        logs.setup()  # idempotent: one handler
        logging.getLogger("rnnimp.distributed").info("shown")
        assert capsys.readouterr().err == "rnnimp: info: shown\n"
        assert len(logger.handlers) == 1
    finally:
        logger.handlers, logger.propagate, logger.level = saved[0], saved[1], saved[2]


XLA_CACHE_NOTES = [  # XLA loading a program from its persistent cache, on a CPU whose target lists tuning preferences
    "E0000 00:00:1795819341.150993   24672 cpu_aot_loader.cc:220] Loading XLA:CPU AOT result. Target machine "
    "feature +prefer-no-scatter is not  supported on the host machine. Machine type used for XLA:CPU compilation "
    "doesn't match the machine type for execution. Compile machine features: [+64bit,+adx] vs host machine "
    "features: [prfchw,avx]. This could lead to execution errors such as SIGILL.",
    "E0000 00:00:1795820917.810869    8486 text_format.cc:378] Error parsing text-format "
    "tensorflow.XlaSerializedCacheEntry: 2:1: Expected identifier, got: 5",
]


def test_xla_cache_notes_are_chatter_but_a_missing_instruction_set_is_not():
    assert all(logs.is_chatter(line) for line in XLA_CACHE_NOTES)
    missing_isa = XLA_CACHE_NOTES[0].replace("+prefer-no-scatter", "+avx512f")
    other_text_format = XLA_CACHE_NOTES[1].replace("XlaSerializedCacheEntry", "GraphDef")
    assert not logs.is_chatter(missing_isa) and not logs.is_chatter(other_text_format)


def test_filtered_stderr_blocks_may_overlap_across_threads(capfd):
    import threading

    inner_entered, outer_left = threading.Event(), threading.Event()

    def other_thread():
        with logs.filtered_stderr():
            inner_entered.set()
            outer_left.wait(10)
            os.write(2, (XLA_CACHE_NOTES[1] + "\nkept from the thread\n").encode())

    thread = threading.Thread(target=other_thread)
    with logs.filtered_stderr():
        thread.start()
        inner_entered.wait(10)
        os.write(2, (CHATTER[1] + "\nkept from the main thread\n").encode())
    outer_left.set()  # the thread's block outlives this one: the capture stays on until it ends
    thread.join()
    os.write(2, b"after both\n")
    assert capfd.readouterr().err == "kept from the main thread\nkept from the thread\nafter both\n"
