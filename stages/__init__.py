"""Loopline: the MNIST pipeline's stages, one module per `dvc.yaml` stage."""

import os

# TensorFlow's C++ start-up chatter (oneDNN notices, CPU feature hints) buries the stages'
# own output. It must be set before TensorFlow is first imported; errors still show.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
