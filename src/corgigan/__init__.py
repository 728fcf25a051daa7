"""corgigan: a reproducible pipeline from scraped dog photos to a trained StyleGAN2-ADA.

Packages by phase: stages/ (one thin module per DVC stage) calls data/, detector/ and analysis/; play/
holds the hands-on commands; stylegan2/ is the model and imports nothing else of ours. At the top: cli (the
`corgigan` command), check and report (commands on the whole pipeline) and the plumbing every phase shares
(params, errors, tables, images, geometry, parallel).
"""

__version__ = "0.1.0"
