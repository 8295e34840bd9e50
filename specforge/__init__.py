"""specforge: train EAGLE-3 draft models for speculative decoding.

Importing the package is cheap: heavy modules (torch, transformers) load only when a
command or submodule needs them.
"""

__version__ = "0.1.0"
