"""Archive scoring: every series and image under a SOURCE -> one table of rows, on one machine or a Ray cluster.

listing.py (SOURCE -> units, content digests), rows.py (a chunk of units -> rows from the
library's answers), scorer.py (one loaded package scoring chunks: what every engine runs),
journal.py (finished units kept as they finish; the results table), job.py (the run, and the
local engine), ray_engine.py (Ray Data actors; imported only for it).
"""

from .job import ENGINES, Summary, run
from .journal import JournalError
from .listing import SourceError
from .scorer import ModelSpec

__all__ = ["ENGINES", "JournalError", "ModelSpec", "SourceError", "Summary", "run"]
