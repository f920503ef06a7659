"""SEA's offline patch labels (seed 001 Sec. 4.1): word lists, the sharded cache, the labeller.

The objective that reads them is `vlalign.objectives.sea`; `vlalign label-patches` writes them.
"""

from vlalign.labels.cache import LabelCache, LabelCacheWriter
from vlalign.labels.grid import grid_mapping, map_labels
from vlalign.labels.words import english_words, read_word_file, resolve_words, shapes_words

__all__ = ["LabelCache", "LabelCacheWriter", "english_words", "grid_mapping", "map_labels", "read_word_file",
           "resolve_words", "shapes_words"]
