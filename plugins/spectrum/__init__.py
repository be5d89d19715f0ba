"""`spectrum`: a training-free, rotation- and shift-invariant calibration baseline."""
