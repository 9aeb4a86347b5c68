"""fmriflow: raw BIDS fMRI -> A424 connectivity -> fMRI foundation models.

The library holds every piece of logic of the Snakemake workflow so that it can be
tested and reused from Python and from the ``fmriflow`` command line.
"""

__version__ = "0.1.0"
CODE_URL = "https://github.com/fmriflow/fmriflow"
