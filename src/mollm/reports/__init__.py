"""Reports: one run (metric table before / after, config, training curves) and comparisons of runs (Pareto plot).

Outputs are a self-contained HTML file (PNG images inlined as base64) and a Markdown file with PNGs beside it.
"""

from mollm.reports._plots import pareto_plot
from mollm.reports.compare import compare_runs, lookup_metric, metric_direction, pareto_front
from mollm.reports.run_report import write_report

__all__ = ["write_report", "compare_runs", "pareto_front", "pareto_plot", "metric_direction", "lookup_metric"]
