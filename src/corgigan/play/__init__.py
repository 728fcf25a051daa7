"""Playing with a model by hand: projection (`corgigan project`: photos into latents, edits) and serve
(`corgigan serve`: a local page, its files in web/).

May import analysis/, detector/, data/, the plumbing at the top of corgigan and stylegan2; never stages/.
"""
