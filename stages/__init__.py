"""Loopline: the MNIST pipeline's stages, one module per `dvc.yaml` stage."""

import os
from contextlib import contextmanager

# TensorFlow's C++ start-up chatter (oneDNN notices, CPU feature hints) buries the stages'
# own output, and turns a one-line error into five. TF_CPP_MIN_LOG_LEVEL silences most of
# it; two notices are printed while the library loads, before that setting is read, so the
# import runs with the stderr file descriptor pointed at /dev/null. Python errors raised by
# the import still show: they are printed after the descriptor is restored.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@contextmanager
def _stderr_silenced():
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


with _stderr_silenced():
    import tensorflow  # noqa: F401
