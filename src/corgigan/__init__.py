"""corgigan: a reproducible pipeline from scraped dog photos to a trained StyleGAN2-ADA."""

__version__ = "0.1.0"
