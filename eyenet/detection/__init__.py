"""Detection: features, detector kinds, calibration and decision rules, regimes, per-device scaling, training pieces, evaluation."""
