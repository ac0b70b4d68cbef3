"""Benchmarks of pytest-llm-guard against the usual ways of calling an LLM from a test suite.

``python -m benchmarks`` runs every scenario (``python -m benchmarks S4 S8`` runs some)
as real pytest sessions, each in a generated project of its own, against the project's
fault server on 127.0.0.1, and writes a markdown table and a JSON file to
``benchmarks/results/``. Only the plugin's public interface is used: its markers,
fixtures, configuration keys, command-line options and ``FaultServer``.

One module per concern:

- ``runner``: one measured unit = one generated project run with ``python -m pytest``;
  session time (read by a conftest hook), whole-process time, requests the fault
  servers saw, test outcomes.
- ``projects``: the files of a generated project (pyproject.toml, conftest.py, the
  contenders' application code).
- ``scenarios``: S0-S10, each a list of units and the targets it is judged by.
- ``report``: medians, ratios, targets met or missed; the markdown table and the JSON.
"""
