"""What vlalign's `lmms_eval.models` entry point hands lmms-eval: the name `vlalign` and where its class lives.

Only lmms-eval imports this module (it loads every entry point of that group whenever `lmms_eval.models` is
imported, whichever model is asked for), so it imports lmms-eval at the top and nothing heavy: the model
class, with torch and the checkpoint loader, is imported by lmms-eval only when `--model vlalign` is run.
"""

from lmms_eval.models.registry_v2 import ModelManifest

MANIFEST = ModelManifest(model_id="vlalign", simple_class_path="vlalign.eval.lmms_eval_model.VlalignLMM")
