"""The temporal model over per-frame embeddings: windows of one subject's consecutive frames
(``windows``) and the sequence networks that label every frame of a window (``models``)."""
