"""Training, evaluation and inference engine for MAY.

One idea per module: ``train`` (the loop), ``checkpoint`` (atomic save, safe load),
``ema`` (weight averaging), ``schedule`` (warmup + cosine LR, parameter groups),
``distributed`` (torchrun/DDP helpers), ``plots`` (curves from results.csv),
``loss``, ``postprocess``, ``evaluate``, ``autoanchor``, ``predict``.

Nothing is imported here, so ``import mlca.engine.checkpoint`` stays cheap.
"""
