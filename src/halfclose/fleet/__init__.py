"""Analysis at fleet scale: capture sets, a Parquet dataset, DuckDB queries, Dask.

* :mod:`halfclose.fleet.sets` (pure): which files are one rotating capture, in what order;
  ``--label`` parsing.
* :mod:`halfclose.fleet.schema`: the dataset's tables, declared once; :mod:`halfclose.fleet.tables`
  turns one capture set's analysis into them.
* I/O edges: :mod:`halfclose.fleet.dataset` (runs written to a staging folder, committed in one
  step), :mod:`halfclose.fleet.runner` (inputs, probes, local processes),
  :mod:`halfclose.fleet._dask` (a Dask cluster), :mod:`halfclose.fleet.query` (DuckDB).
* :mod:`halfclose.fleet._engine` is the only module that calls the capture and analysis packages.

See docs/fleet.md.
"""

from __future__ import annotations

from halfclose.fleet.sets import CaptureFile, CaptureSet, Labels, group_sets, parse_labels, rotation_key

__all__ = ["CaptureFile", "CaptureSet", "Labels", "group_sets", "parse_labels", "rotation_key"]
