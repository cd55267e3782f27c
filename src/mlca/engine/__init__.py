"""Training, evaluation and inference engine for MAY.

One idea per module: ``train`` (the loop), ``checkpoint`` (atomic save, safe load),
``ema`` (weight averaging), ``schedule`` (warmup + cosine LR, parameter groups),
``distributed`` (torchrun/DDP helpers), ``plots`` (curves from results.csv),
``loss``, ``postprocess``, ``evaluate``, ``autoanchor``, ``predict``, ``hyp`` (``--hyp`` split into
the loss gains and the augmentation settings), ``dataload`` (loader workers, data-wait warning),
and two leaves everything may import: ``fitness`` (the model-selection score) and ``unwrap``
(the plain model inside DDP / compile / EMA wrappers).

Nothing is imported here, so ``import mlca.engine.checkpoint`` stays cheap.
"""
