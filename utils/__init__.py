"""The library behind main.py, inference.py and export.py, in layers; a module
imports only from its own layer or the layers above it in this list (and from
models/, which sits between `runtime` and `data`):

    runtime    configuration, errors, process set-up, atomic files, registries
    data       image folders, decoding, datasets, augmentation and mixing
    engine     training and evaluation loops, optimizer and schedule, training state
    deploy     saved students, export (Paddle inference, ONNX), prediction
    distill    distillation methods, per-fold teachers, the teacher view cache
    reporting  metrics, plots, VisualDL records, report.md, complexity
    pipeline   the K-fold run end to end, the ablation runner, the demo
"""
