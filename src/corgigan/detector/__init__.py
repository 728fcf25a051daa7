"""The dog detector: its labelled training data (yolo_data), reading untrusted ultralytics weights without
running them (yolo_weights), and everything that touches ultralytics (detection: train, save, predict,
and the one loader of the saved detector, load_dog_detector, with DogDetector holding its settings).

May import data/ (the drawn scenes), the plumbing at the top of corgigan and stylegan2; never analysis/,
play/ or stages/.
"""
