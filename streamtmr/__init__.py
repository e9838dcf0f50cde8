"""streamtmr: real-time anonymization of skeleton streams by motion retargeting."""

__version__ = "0.1.0"
