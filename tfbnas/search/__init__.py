"""Architecture search: the decoupled search model (:mod:`.engine`), strategies (:mod:`.strategies`),
callbacks (:mod:`.callbacks`) and the run driver (:mod:`.run_search`)."""

from tfbnas.search.engine import SearchModel
from tfbnas.search.strategies import STRATEGIES, Bats, Darts, Dcp, Strategy, make_strategy

__all__ = ["SearchModel", "STRATEGIES", "Bats", "Darts", "Dcp", "Strategy", "make_strategy"]
