"""A run end to end: the K-fold cross-validation, the ablation runner and the offline demo."""
