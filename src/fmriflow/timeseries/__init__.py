"""Region time series as an entry point (``input.mode: timeseries``).

Ready-made region time series (XCP-D, C-PAC / ABIDE-Preprocessed, plain TSV/CSV/NPY) take the
place of the voxel steps: ``discover`` finds the runs, ``readers`` parse each format,
``regions`` builds the atlas table (coordinates or label-image centroids) and checks each run
against it, ``steps`` writes the per-run artefacts the later steps read.
"""

from .discover import TimeseriesInputs, find_inputs
from .readers import FORMATS, RegionSeries, read_series
from .regions import centroid_table, check_series, coordinates_table
from .settings import config_problems

__all__ = ["FORMATS", "RegionSeries", "TimeseriesInputs", "centroid_table", "check_series", "config_problems",
           "coordinates_table", "find_inputs", "read_series"]
