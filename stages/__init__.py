"""The pipeline's entry points: one module per `dvc.yaml` stage, and `predict`.

Each one wires its command line and `params.yaml` keys to the library in `loopline/`, which
imports none of them. Importing a stage has no side effects.
"""
