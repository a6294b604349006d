"""Loopline's library: what the stages in `stages/` share, importing none of them.

params (params.yaml, checked), files (all-or-nothing outputs, one-line errors), records
(the TFRecord format), model (the models and their SavedModel export), loop (the training
loop), checkpoints, progress (progress lines and DVCLive) and savedmodel (loading the
SavedModel). Importing any of them has no side effects. A stage run as a command
(`python -m stages.train`) first calls import_tensorflow_quietly, so that TensorFlow's
start-up notices do not bury its own output.
"""

import os
import threading

# What TensorFlow prints while its library loads, whatever TF_CPP_MIN_LOG_LEVEL says (some
# lines come before that setting is read, some runs and not others): dropped, line by line.
STARTUP_NOTICES = (
    b"WARNING: All log messages before absl::InitializeLog() is called",
    b"oneDNN custom operations are on",
    b"cpu_feature_guard.cc",
    b"To enable the following instructions:",
)


def import_tensorflow_quietly() -> None:
    """Import TensorFlow with its start-up notices filtered out of stderr.

    For a stage's command line only. TF_CPP_MIN_LOG_LEVEL=2 hides TensorFlow's info and
    warning lines, never its errors. During the import, the stderr file descriptor goes
    through a pipe whose reader forwards every other line at once, so an error (even a
    fatal one from native code) still reaches the terminal.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    read_end, write_end = os.pipe()
    saved = os.dup(2)
    os.dup2(write_end, 2)
    os.close(write_end)

    def forward() -> None:
        with os.fdopen(read_end, "rb") as pipe:
            for line in pipe:
                if not any(notice in line for notice in STARTUP_NOTICES):
                    os.write(saved, line)

    reader = threading.Thread(target=forward, daemon=True)
    reader.start()
    try:
        import tensorflow  # noqa: F401
    finally:
        os.dup2(saved, 2)  # closes the pipe's last write end: the reader sees its end
        reader.join()
        os.close(saved)
