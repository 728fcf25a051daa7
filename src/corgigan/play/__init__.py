"""Playing with a model by hand: photos (a photo into a target: the filter stage's crop around the dog),
projection (`corgigan project`: the optimiser that finds a target's latent), explorer (the model side of
`corgigan serve`: the shared model, projection queue and image cache) and serve (its HTTP side: request
parsing, connections, the page in web/).

May import analysis/, detector/, data/, the plumbing at the top of corgigan and stylegan2; never stages/.
"""
