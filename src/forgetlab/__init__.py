"""forgetlab: how fine-tuning regularizers change how well a language model can unlearn."""

__version__ = "0.1.0"
