"""Image folders, decoding, the dataset and its loader, augmentation and mixing."""
