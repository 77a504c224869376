"""korepl: a terminal REPL for exploratory Korean writing with KoGPT2."""

__version__ = "0.1.0"
