"""Model training, evaluation and calibration on a site's own data (issue 14)."""
