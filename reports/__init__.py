"""Report stage (cxr.reports): metrics with CIs, figures, HTML report, regression gate.
Core: ``summarize``."""
