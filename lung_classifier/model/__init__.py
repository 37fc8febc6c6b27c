"""The network: backbone.py (ImageNet ResNet50 weights, resolved once per machine), preprocessing.py
(slice -> model input), head.py (the trained arrays, readable without TensorFlow), network.py (taps,
head, decision and OOD in the graph, Grad-CAM, export), precision.py (bfloat16 where the CPU has it)."""
