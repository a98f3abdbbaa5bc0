"""Training: ``run.train`` (what ``abaw train`` calls) and the parts it is built from.

model.py (timm backbone, initial weights, input normalisation), data.py (labelled and
unlabelled streams, views, resumable sampling), loop.py (one step: losses, then the optimiser
step), checkpoint.py (safetensors + weights-only state), distributed.py (torchrun / DDP),
logbook.py (metrics.csv), run.py (the run folder and the loop around it). Nothing is
re-exported here, so importing one part never drags in the others.
"""
