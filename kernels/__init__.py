"""The CPU speed-ups of training: compiled operators (csrc/, built by compiled_ops) for depthwise
convolutions, MobileNetV3's gates and convolutions through the oneDNN that Paddle ships, and
small feature maps as one product per batch. Entered through one function,
cpu_kernels.use_fast_cpu_kernels; models/ holds the networks, which know nothing of them."""
