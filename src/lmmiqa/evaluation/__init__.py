"""Evaluation: correlation metrics, logistic fits, the eval runner and its reports.

Submodules are imported on demand (``lmmiqa.evaluation.correlation``, ``.logistic``, ``.runner``, ``.report``).
"""
