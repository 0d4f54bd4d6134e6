"""The networks: the ResNet50 teacher, the MobileNet students and the attention
modules that plug into them."""
