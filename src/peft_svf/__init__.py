"""peft-svf: Transformer-Squared (Sun, Cetin, Tang, ICLR 2025) as a PEFT plugin."""

__version__ = "0.1.0"
