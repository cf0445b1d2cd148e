"""Detection: features, detector kinds, calibration and decision rules, regimes,
per-device scaling, the training loop's pieces, and evaluation."""
