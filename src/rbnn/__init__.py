"""rbnn: binary neural networks (RBNN, ReBNN, IR-Net, XNOR-Net, Bi-Real, BNN) with 1-bit deployment."""

__version__ = "0.1.0"
