"""The paper's experiment: MAY with each attention, over seeds, with honest statistics.

    from mlca.compare import CompareConfig, run_compare
    result = run_compare(CompareConfig(attentions=["none", "eca", "mlca"], seeds=3, epochs=30))
    print(result.table)

One file per idea: ``config`` (settings), ``presets`` (named module sets with their
constructor settings: ``CompareConfig.from_preset("paper")``), ``runner`` (resumable (attention, seed) runs, GPU
spreading), ``stats`` (mean ± std, Welch's t-test, CI, MDE, Holm), ``cost`` (params, GFLOPs), ``latency``
(interleaved batch-1 timing), ``report`` (CSV/Markdown table), ``detectors`` (MAY or an ultralytics YOLO:
``--detector``) with ``ultralytics_run`` (one run trained by ultralytics), ``columns``
(which results.csv columns hold the mAPs), ``plots``, ``cam`` (EigenCAM
and MLCA maps), ``experiment`` (all of it in order).
"""

from .config import CompareConfig
from .experiment import CompareResult, run_compare

__all__ = ["CompareConfig", "CompareResult", "run_compare"]
