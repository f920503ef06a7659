"""What both export round-trip tests' child processes run first: make vlalign unimportable, so only
transformers (and a remote-code folder's own code) can load the export."""

WITHOUT_VLALIGN = r'''
import importlib.util
import sys

folder, image_path, prompt, new_tokens, out, repo = sys.argv[1:7]
# vlalign is installed in editable mode: a .pth file in site-packages (read even under -I) puts its finder on
# sys.meta_path. Remove that and every path into the repository, so only transformers and the folder's own code
# can load the export.
# (The finder is a class or an instance, depending on the setuptools version that made the install.)
sys.meta_path[:] = [finder for finder in sys.meta_path
                    if "vlalign" not in (finder if isinstance(finder, type) else type(finder)).__module__]
sys.path_hooks[:] = [hook for hook in sys.path_hooks if "vlalign" not in getattr(hook, "__module__", "")]
sys.path_importer_cache.clear()
sys.path[:] = [entry for entry in sys.path if not entry.startswith(repo)]
assert importlib.util.find_spec("vlalign") is None, "vlalign is still importable"
try:
    import vlalign  # noqa: F401
except ImportError:
    pass
else:
    raise SystemExit("vlalign is importable in the child process")
'''
