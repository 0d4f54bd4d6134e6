"""The library behind main.py, inference.py and export.py, in layers; a module
imports only from its own layer or the layers above it in this list (and from
models/, the networks, and kernels/, their CPU speed-ups, which sit between
`runtime` and `data`):

    runtime    configuration, run layout on disk, errors, process set-up, atomic files, registries
    data       image folders, decoding, the fold split, datasets, augmentation and mixing
    engine     training and evaluation loops, optimizer and schedule, training state
    deploy     saved students, export (Paddle inference, ONNX), prediction
    distill    the teacher side: methods and their settings, per-fold teachers, the view cache,
               and the teacher signal every distilled batch learns from
    reporting  metrics, plots, VisualDL records, report.md, complexity
    pipeline   the K-fold run end to end, the ablation runner, the demo
"""
