"""chatcore: a language-model chatbot framework for chat platforms and the terminal.

Plugin authors import ``hookimpl`` from here; everything else lives in submodules.
"""

from chatcore.hookspecs import hookimpl

__version__ = "0.1.0"

__all__ = ["__version__", "hookimpl"]
