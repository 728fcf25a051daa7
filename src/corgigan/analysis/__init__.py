"""What a trained generator does, measured: sampling (load a model; images, truncation, mixing, videos),
fid (FID/KID), directions (SeFa, PCA, boundaries in W), attributes (what the dog detector and two image
statistics see in generated images), curves (training curves and scores as PNGs).

May import detector/, data/, the plumbing at the top of corgigan and stylegan2; never play/ or stages/.
"""
