"""Playing with a model by hand: photos (a photo into a target: the filter stage's crop around the dog),
projection (`corgigan project`: the optimiser that finds a target's latent) and serve (`corgigan serve`:
a local page, its files in web/).

May import analysis/, detector/, data/, the plumbing at the top of corgigan and stylegan2; never stages/.
"""
