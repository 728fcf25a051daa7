"""From photos to the training set: the libraries of the data stages (scrape, filter, dedup, dataset).

sources/ (synthetic, folder, instagram) deliver images to scrape; scenes draws the synthetic dogs (also the
detector's training pictures); filter_rules decides each image and plans its square crop; dedup finds
near-duplicate crops; funnel counts what each step kept and why; contact_sheet and dataset_zip write the
dataset stage's picture and zip.

May import the plumbing at the top of corgigan (errors, params, tables, images, geometry, parallel) and
stylegan2; never detector/, analysis/, play/ or stages/.
"""
