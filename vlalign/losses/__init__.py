"""Pure tensor functions: the papers' losses (functional.py) and the retrieval metrics (retrieval.py)."""
