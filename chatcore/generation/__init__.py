"""Generation: backends that turn chat messages into a stream of text chunks.

``types`` holds the contract; ``fake`` a scripted backend for tests; ``local`` the transformers
backend for local models (the embedded SmolLM2 by default).
"""
