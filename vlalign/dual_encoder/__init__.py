"""CLIP-like dual encoders: one interface (base.py) over a small offline LiT-style model (packaged.py, heads.py,
training in train.py, saving in checkpoint.py) and HF CLIP / SigLIP (hf.py), and what SEA uses them for:
labelling every image patch with words (labeller.py, `vlalign label-patches`).

Import from the modules: this package file imports nothing, because the command line builds the parsers
of `train-dual-encoder` and `label-patches` (cli.py, label_cli.py) on every start.
"""
