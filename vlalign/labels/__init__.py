"""SEA's offline patch labels (SEA Sec. 4.1): word lists, the labelling rule, the sharded cache, grid mapping.

Below the objectives: `vlalign.objectives.sea` reads the cache; the labeller that writes it
(`vlalign label-patches`, vlalign.dual_encoder.labeller) runs a dual encoder and lives with them.
"""

from vlalign.labels.cache import LabelCache, LabelCacheWriter
from vlalign.labels.grid import grid_mapping, map_labels
from vlalign.labels.topn import label_patches
from vlalign.labels.words import english_words, read_word_file, resolve_words, shapes_words

__all__ = ["LabelCache", "LabelCacheWriter", "english_words", "grid_mapping", "label_patches", "map_labels", "read_word_file",
           "resolve_words", "shapes_words"]
