"""StyleGAN2-ADA in plain PyTorch. Imports only torch, numpy and Pillow: it knows nothing of DVC."""
